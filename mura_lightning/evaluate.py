"""`python -m mura_lightning.evaluate ckpt_path=FILE [data.root=DIR] [bodypart=...]`: the MURA paper's table
for a checkpoint (or an ensemble) on the official valid split, with predictions and a submission file."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import matplotlib.pyplot as plt
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mura_lightning.callbacks.metrics import figures
from mura_lightning.checkpoints import datamodule_settings, load_classifier
from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.errors import MuraError, exit_on_user_error
from mura_lightning.io import RESULTS_FILE, write_atomically, write_json_atomic, write_text_atomic
from mura_lightning.metrics import PredictionTable, StageMetrics, metrics_by_body_part
from mura_lightning.models.module import MURAClassifier
from mura_lightning.report import print_summary

log = logging.getLogger(__name__)

STAGE = "test"
FIGURES = ("confusion_matrix", "roc")
FIGURE_DPI = 120
EVAL_DATA_KEYS = ("batch_size", "num_workers", "on_error", "pin_memory")


def checkpoint_paths(value: Any) -> list[str]:
    """`ckpt_path` as a list: one path, or several for an ensemble."""
    paths = [value] if isinstance(value, str) else list(value)
    if not paths:
        raise MuraError("ckpt_path=[] names no checkpoint")
    return [str(path) for path in paths]


def datamodule_for(ckpt_path: str, model: MURAClassifier, cfg: DictConfig) -> MURADataModule:
    """The data the checkpoint was trained on (or data.root / bodypart when given), prepared the way the model
    expects it (its image size, channels and normalisation), without augmentation or generation."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    base = datamodule_settings(ckpt_path) or {key: value for key, value in data.items() if key != "_target_"}
    base.pop("synthetic", None)  # generator settings of a SyntheticMURADataModule: evaluation never generates
    root = data["root"] or base.get("root")
    if root is None:
        raise MuraError(f"{ckpt_path} does not say which data it was trained on: pass data.root=/path/to/MURA-v1.1")
    preprocessing = model.hparams["preprocessing"]
    return MURADataModule(
        **{
            **base,
            "root": root,
            "body_parts": list(cfg.bodypart) if cfg.get("bodypart") else base.get("body_parts") or "all",
            "image_size": preprocessing["image_size"],
            "mean": preprocessing["mean"],
            "std": preprocessing["std"],
            "in_chans": model.hparams["backbone"]["in_chans"],
            "balanced_sampler": False,
            "persistent_workers": False,
            "gpu_augment": False,
            **{key: data[key] for key in EVAL_DATA_KEYS},
        }
    )


def predict_images(model: MURAClassifier, datamodule: MURADataModule, cfg: DictConfig) -> PredictionTable:
    """Per-image probabilities of the model on the official valid split, ordered by image id."""
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    batches = trainer.predict(model, dataloaders=datamodule.test_dataloader())
    columns = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
    order = torch.argsort(columns["image_id"])
    return PredictionTable(
        probs=columns["prob"][order].float(),
        labels=columns["label"][order].float(),
        studies=columns["study"][order],
        body_parts=columns["body_part"][order],
        image_ids=columns["image_id"][order],
    )


def ensemble(tables: list[PredictionTable]) -> PredictionTable:
    """The mean image probability over models that scored the same images."""
    first = tables[0]
    for table in tables[1:]:
        if not torch.equal(table.image_ids, first.image_ids):
            raise MuraError(
                "the checkpoints of an ensemble must be evaluated on the same images: same data.root and body parts"
            )
    probs = torch.stack([table.probs for table in tables]).mean(dim=0)
    return PredictionTable(probs, first.labels, first.studies, first.body_parts, first.image_ids)


def prediction_frames(
    images: PredictionTable, studies: PredictionTable, datamodule: MURADataModule, threshold: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-image (path, body_part, study, label, prob) and per-study (study, body_part, label, prob, pred)
    tables, with study folders relative to the MURA root."""
    names = datamodule.study_names()
    paths = datamodule.image_table().set_index("image_id")["path"]
    image_frame = images.to_frame()
    image_frame["path"] = paths.loc[image_frame["image_id"]].to_numpy()
    image_frame["study"] = names.loc[image_frame["study"]].to_numpy()
    study_frame = studies.to_frame()
    study_frame["study"] = names.loc[study_frame["study"]].to_numpy()
    study_frame["pred"] = (study_frame["prob"] > threshold).astype("int64")
    return (
        image_frame[["path", "body_part", "study", "label", "prob"]],
        study_frame[["study", "body_part", "label", "prob", "pred"]],
    )


def write_submission(path: Path, study_folders: Iterable[str], preds: Iterable[int]) -> None:
    """The official MURA submission file: headerless `MURA-v1.1/valid/XR_.../studyN_.../,label` rows."""
    rows = "".join(f"{folder}/,{int(pred)}\n" for folder, pred in zip(study_folders, preds, strict=True))
    write_text_atomic(path, rows)


def write_outputs(out: Path, values: dict, images, studies, datamodule, threshold: float, title: str) -> None:
    """results.json, the per-body-part table, both prediction tables, submission.csv and the figures."""
    write_json_atomic(out / RESULTS_FILE, values)
    table = metrics_by_body_part(values, STAGE, "study")
    write_atomically(out / "metrics_by_bodypart.csv", lambda tmp: table.to_csv(tmp))
    image_frame, study_frame = prediction_frames(images, studies, datamodule, threshold)
    write_atomically(out / "predictions_images.csv", lambda tmp: image_frame.to_csv(tmp, index=False))
    write_atomically(out / "predictions_studies.csv", lambda tmp: study_frame.to_csv(tmp, index=False))
    folders = [f"{datamodule.root.name}/{study}" for study in study_frame["study"]]
    write_submission(out / "submission.csv", folders, study_frame["pred"])
    for name, figure in figures(studies, threshold, title).items():
        if name in FIGURES:
            write_atomically(out / f"{name}.png", partial(save_png, figure))
        plt.close(figure)


def save_png(figure: plt.Figure, path: Path) -> None:
    """Write a matplotlib figure as a PNG."""
    figure.savefig(path, format="png", dpi=FIGURE_DPI)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint(s) on the official valid split; write the outputs into the run folder."""
    paths = checkpoint_paths(cfg.ckpt_path)
    models = [load_classifier(path) for path in paths]
    datamodules = [datamodule_for(path, model, cfg) for path, model in zip(paths, models, strict=True)]
    tables = []
    for model, datamodule in zip(models, datamodules, strict=True):
        datamodule.setup()
        tables.append(predict_images(model, datamodule, cfg))
    images = ensemble(tables)
    first = models[0]
    aggregation = cfg.study_aggregation or first.study_aggregation
    threshold = (
        cfg.threshold
        if cfg.threshold is not None
        else (float(first.tuned_threshold) if len(models) == 1 else first.metric_settings.threshold)
    )
    studies = images.by_study(aggregation)
    values = StageMetrics().score(STAGE, {"image": images, "study": studies}, threshold)
    values.update(
        {
            "ckpt_paths": paths,
            "models": [model.hparams["backbone"]["name"] for model in models],
            "body_parts": datamodules[0].body_parts,
            "data_root": str(datamodules[0].root),
            f"{STAGE}/threshold": threshold,
            "study_aggregation": aggregation,
        }
    )
    out = Path(cfg.paths.output_dir)
    write_outputs(out, values, images, studies, datamodules[0], threshold, f"{'+'.join(values['models'])} study")
    print_summary(values, STAGE)
    log.info("evaluation written to %s", out)
    return values


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
