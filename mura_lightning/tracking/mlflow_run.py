"""MLflow tracking of a training run: Lightning's MLFlowLogger (the run's parameters, every metric), checked to
reach its server before anything runs, and at the end the run folder's outputs as artifacts with the resolved
config, and the best checkpoint registered as a model version tagged with its metrics."""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

SERVER_SCHEMES = ("http://", "https://")
LOCAL_DATABASE = "mlflow.db"  # a local store's runs, params, metrics and registry (SQLite: MLflow 3 refuses files)
LOCAL_ARTIFACTS = "artifacts"  # a local store's artifacts, beside its database
HEALTH_TIMEOUT_S = 5  # an MLflow server answers /health at once; a closed port refuses at once
SKIPPED_FOLDERS = ("checkpoints", "tensorboard", "csv", "mlruns")  # logged otherwise, or too big to copy
CONFIG_ARTIFACT = "config.yaml"  # the run's resolved config
CHECKPOINT_ARTIFACTS = "checkpoints"  # where the best checkpoint lands among the run's artifacts
TAGGED_METRICS = ("kappa", "auroc", "accuracy", "sensitivity", "specificity", "f1_abnormal")
TAGGED_PREFIXES = ("val/image/", "val/study/", "test/image/", "test/study/")


def check_tracking_uri(uri: str | None) -> None:
    """Raise a MuraError naming `uri` when it is a server address (http or https) where no MLflow server answers
    (its /health), instead of MLflow's retries for minutes; local folders are left to MLflow."""
    if not uri or not str(uri).startswith(SERVER_SCHEMES):
        return
    try:
        with urllib.request.urlopen(f"{str(uri).rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:
        reason = str(getattr(err, "reason", err))
    raise MuraError(
        f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there ({reason}); start one (mlflow server "
        "--host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db) or leave tracking_uri at its default "
        "(a local mlruns/ folder)"
    )


def check_tracking(cfg: DictConfig) -> None:
    """Check the tracking URI of each configured logger that has one (`hydra_app`'s check of train and tune)."""
    for logger in (cfg.get("logger") or {}).values():
        if isinstance(logger, DictConfig) and "tracking_uri" in logger:
            check_tracking_uri(logger.tracking_uri)


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for a run writing into `run_dir` (the run's name by default: the folder's), its
    tracking URI checked first (`check_tracking_uri`); a URI that is a plain folder is a local store there (its
    SQLite database `mlflow.db` and its `artifacts/`). `registered_model_name`: the model registry entry the best
    checkpoint becomes a version of (None: none); the other arguments are MLFlowLogger's."""

    def __init__(
        self, run_dir: str, registered_model_name: str | None = None, run_name: str | None = None, **kwargs: Any
    ) -> None:
        check_tracking_uri(kwargs.get("tracking_uri"))
        if kwargs.get("tracking_uri") and "://" not in str(kwargs["tracking_uri"]):
            folder = Path(kwargs["tracking_uri"]).expanduser().resolve()
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["tracking_uri"] = f"sqlite:///{folder / LOCAL_DATABASE}"
            kwargs.setdefault("artifact_location", (folder / LOCAL_ARTIFACTS).as_uri())
        super().__init__(run_name=run_name or Path(run_dir).name, **kwargs)
        self.run_dir = Path(run_dir)
        self.registered_model_name = registered_model_name

    def log_outputs(self, config: str, ckpt_path: str | None, results: dict[str, Any]) -> None:
        """Log the run folder's outputs (`run_outputs`) and `config` (the resolved config, as YAML) as the run's
        artifacts; log `ckpt_path` too and register it as a model version with the overall metrics of `results`
        as tags; then mark the run finished."""
        client, run_id = self.experiment, self.run_id
        for path in run_outputs(self.run_dir):
            folder = path.parent.relative_to(self.run_dir).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
        client.log_text(run_id, config, CONFIG_ARTIFACT)
        if ckpt_path and self.registered_model_name:
            self.register_checkpoint(Path(ckpt_path), results)
        client.set_terminated(run_id, "FINISHED")

    def register_checkpoint(self, ckpt_path: Path, results: dict[str, Any]) -> None:
        """`ckpt_path` as a run artifact and a new version of the registered model, tagged with the metrics."""
        from mlflow.exceptions import MlflowException

        client, run_id = self.experiment, self.run_id
        client.log_artifact(run_id, str(ckpt_path), CHECKPOINT_ARTIFACTS)
        try:
            client.create_registered_model(self.registered_model_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{CHECKPOINT_ARTIFACTS}/{ckpt_path.name}"
        version = client.create_model_version(
            self.registered_model_name, source, run_id=run_id, tags=metric_tags(results)
        )
        log.info("MLflow: %s registered as %s version %s", ckpt_path.name, version.name, version.version)


def run_outputs(run_dir: Path) -> Iterator[Path]:
    """The files of a run folder worth keeping with its MLflow run: results, predictions, body-part tables,
    figures, the report, the log and Hydra's config; not checkpoints, event files or temporary files."""
    for path in sorted(run_dir.rglob("*")):
        parts = path.relative_to(run_dir).parts
        if path.is_file() and parts[0] not in SKIPPED_FOLDERS and not path.name.endswith(".tmp"):
            yield path


def metric_tags(results: dict[str, Any], prefixes: Sequence[str] = TAGGED_PREFIXES) -> dict[str, str]:
    """The overall val and test metrics of `results` (image and study level), as tag values."""
    return {
        f"{prefix}{name}": f"{float(results[f'{prefix}{name}']):.6g}"
        for prefix in prefixes
        for name in TAGGED_METRICS
        if isinstance(results.get(f"{prefix}{name}"), (int, float)) and math.isfinite(results[f"{prefix}{name}"])
    }


def log_run_outputs(loggers: Sequence[Any], cfg: DictConfig, ckpt_path: str | None, results: dict[str, Any]) -> None:
    """Hand the run's outputs to each MLflow logger among `loggers` (`MLflowRunLogger.log_outputs`)."""
    trackers = [logger for logger in loggers if isinstance(logger, MLflowRunLogger)]
    if trackers:
        config = OmegaConf.to_yaml(cfg, resolve=True)
        for tracker in trackers:
            tracker.log_outputs(config, ckpt_path, results)
