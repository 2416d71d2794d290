"""`python -m mura_lightning.train [overrides]`: train, pick the best checkpoint, test it, write results.json."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams as hparams_summary

from mura_lightning.cli import hydra_app
from mura_lightning.cluster import slurm
from mura_lightning.cluster.hydra_ddp import distributed_job
from mura_lightning.config import instantiate, instantiate_all
from mura_lightning.data.index import resolve_body_parts
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.evaluation.metrics import LEVELS
from mura_lightning.evaluation.outputs import write_predictions, write_scored_test
from mura_lightning.evaluation.tables import print_metrics_table
from mura_lightning.io import RESULTS_FILE, write_json_atomic
from mura_lightning.lightning_logs import route_lightning_logs
from mura_lightning.models.module import EVAL_STAGES, MURAClassifier
from mura_lightning.reporting.build import ReportSettings
from mura_lightning.reporting.write import write_report
from mura_lightning.tracking.mlflow_run import check_tracking, log_run_outputs

log = logging.getLogger(__name__)

HPARAM_GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "metrics")
HPARAM_METRICS = ("kappa", "auroc", "accuracy", "sensitivity", "specificity", "f1_abnormal")


def build_model(cfg: DictConfig) -> MURAClassifier:
    """The LightningModule from the model config, with the loss, optimizer and scheduler built from theirs."""
    scheduler_cfg = cfg.get("scheduler") or {}
    builder = scheduler_cfg.get("builder")
    settings = {key: value for key, value in scheduler_cfg.items() if key != "builder" and value is not None}
    return instantiate(
        cfg.model,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(builder) if builder else None,
        scheduler_settings=settings if builder else None,
        _convert_="all",
        _recursive_=False,
    )


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings worth comparing across runs, nested by group."""
    chosen = OmegaConf.to_container(cfg, resolve=True)
    params = {group: chosen.get(group) for group in HPARAM_GROUPS}
    params["seed"] = cfg.seed
    return params


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of `group/key` names; values TensorBoard cannot show become strings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def log_hyperparameters(loggers: list[Any], cfg: DictConfig) -> None:
    """Log the settings; for TensorBoard also declare the final metrics so its HParams tab shows their values."""
    params = hyperparameters(cfg)
    metric_tags = [f"{stage}/{level}/{name}" for stage in EVAL_STAGES for level in LEVELS for name in HPARAM_METRICS]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment.file_writer
            for summary in hparams_summary(flatten_params(params), dict.fromkeys(metric_tags, 0.0)):
                writer.add_summary(summary)
        else:
            logger.log_hyperparams(params)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint kept by the ModelCheckpoint that monitors a metric, or None."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    return None


def run_description(cfg: DictConfig, ckpt_path: str | None) -> dict[str, Any]:
    """What the results belong to: backbone, body parts, checkpoint, run folder, overrides."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {
        "model": cfg.model.backbone.name,
        "pooling": cfg.model.pooling.name,
        "pretrained": bool(cfg.model.backbone.pretrained),
        "body_parts": resolve_body_parts(cfg.data.body_parts),
        "ckpt_path": ckpt_path,
        "run_dir": cfg.paths.output_dir,
        "seed": cfg.seed,
        "overrides": overrides,
    }


def train(cfg: DictConfig, *, extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit, then validate and test the best checkpoint; returns the flat results (also in <run>/results.json) and
    writes its predictions (predictions_val.csv, out-of-fold in cross-validation, and predictions_test.csv).
    `extra_callbacks` join the configured ones (a search's pruning callback, say)."""
    if not cfg.train and not cfg.ckpt_path:
        raise MuraError("train=false needs ckpt_path=FILE: the checkpoint to test")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).expanduser().is_file():
        raise MuraError(
            f"ckpt_path={cfg.ckpt_path} does not exist: pass the checkpoint to resume from (<run>/checkpoints/"
            "last.ckpt), or leave ckpt_path out to start afresh"
        )
    if cfg.get("report") and not cfg.test:
        raise MuraError("report=true needs test=true: the report shows the test of the best checkpoint")
    slurm.record_job(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(cfg)
    datamodule = instantiate(
        cfg.data, preprocessing=model.preprocessing.to_dict(), study_batches=model.pools_studies, _convert_="all"
    )
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        **slurm.trainer_options([*instantiate_all(cfg.get("callbacks")), *extra_callbacks]),
    )
    if trainer.is_global_zero:
        log_hyperparameters(loggers, cfg)
    ckpt_path = cfg.ckpt_path
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        ckpt_path = best_checkpoint(trainer) or None
        if ckpt_path is None:
            log.warning("no best checkpoint was kept; evaluating the weights at the end of training")
    results: dict[str, Any] = {}
    for run_stage in (trainer.validate, trainer.test) if cfg.test else (trainer.validate,):
        for values in run_stage(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
            results.update(values)
    results.update(run_description(cfg, ckpt_path))
    if trainer.is_global_zero:
        out, rows = Path(cfg.paths.output_dir), datamodule.image_table()
        write_predictions(out, model.last_predictions["val"], rows, model.decision_thresholds("val"), "val")
        if cfg.test:
            results = write_test_outputs(out, model, rows, results)
        print_metrics_table(results, "test" if cfg.test else "val")
        path = write_json_atomic(out / RESULTS_FILE, results)
        log.info("results: %s", path)
        if cfg.get("report"):
            write_report(out, ReportSettings.from_config(cfg.reporting))
        log_run_outputs(loggers, cfg, ckpt_path, results)
    return results


def write_test_outputs(out: Path, model: MURAClassifier, rows, results: dict[str, Any]) -> dict[str, Any]:
    """The final test's prediction file and per-body-part tables in the run folder `out` (`rows`: the
    datamodule's image table); the results with the patient-bootstrap intervals of the study-level metrics
    added."""
    settings = BootstrapSettings.from_config(model.metric_settings.bootstrap)
    tables, threshold = model.last_predictions["test"], model.decision_thresholds("test")
    results, _ = write_scored_test(out, results, tables, rows, threshold, settings, "test")
    return results


def optimized_value(results: dict[str, Any], cfg: DictConfig) -> float:
    """The value of `optimized_metric` in the results, for Hydra sweepers."""
    if cfg.optimized_metric not in results:
        metrics = ", ".join(sorted(key for key in results if "/" in key))
        raise MuraError(f"optimized_metric={cfg.optimized_metric} was not measured; choose one of: {metrics}")
    return float(results[cfg.optimized_metric])


@hydra_app("train", check=check_tracking)
def main(cfg: DictConfig) -> float:
    """Hydra entry point; the value of `optimized_metric`, for sweepers."""
    route_lightning_logs()
    with distributed_job():
        results = train(cfg)
    value = optimized_value(results, cfg)
    log.info(
        "%s = %.4f; TensorBoard: make tensorboard (or tensorboard --logdir %s)",
        cfg.optimized_metric,
        value,
        Path(cfg.paths.output_dir) / "tensorboard",
    )
    return value


if __name__ == "__main__":
    main()
