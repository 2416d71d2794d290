"""What a report is made of, read from a training run or an evaluate folder: results, test predictions, the
checkpoints with their digests, and the composed config the model was trained with, resolved."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.metrics import THRESHOLD_COLUMN
from mura_lightning.evaluation.outputs import TEXT_COLUMNS, predictions_file
from mura_lightning.inference.checkpoints import datamodule_settings, read_checkpoint
from mura_lightning.io import HYDRA_DIR, RESULTS_FILE
from mura_lightning.runs import read_overrides, read_results, training_folder

log = logging.getLogger(__name__)

STAGE = "test"
TRAINING_RUN, EVALUATION = "training run", "evaluation"
DIGEST_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file the predictions came from, with its SHA-256 (None when the file is gone)."""

    path: str
    sha256: str | None


@dataclass(frozen=True)
class ScoredRun:
    """A folder holding a scored test: a training run (`kind` TRAINING_RUN) or an evaluate output (EVALUATION).

    Args:
        folder: the folder.
        kind: TRAINING_RUN or EVALUATION.
        results: its results.json.
        predictions: its predictions_test.csv, image and study rows.
        checkpoints: the checkpoint(s) the predictions came from.
        config: the composed config the model was trained with, resolved (None when no run folder or checkpoint
            says).
        config_source: where `config` was read.
        evaluation_config: an evaluation's own composed config, resolved (None for a training run).
        datamodule: the data settings the (first) checkpoint was trained with (root, body parts, split).
        training_overrides: the command-line overrides the model was trained with (empty when unknown).
    """

    folder: Path
    kind: str
    results: dict[str, Any]
    predictions: pd.DataFrame
    checkpoints: list[Checkpoint]
    config: dict[str, Any] | None
    config_source: str
    evaluation_config: dict[str, Any] | None = None
    datamodule: dict[str, Any] = field(default_factory=dict)
    training_overrides: list[str] = field(default_factory=list)

    def level(self, level: str) -> pd.DataFrame:
        """The prediction rows of `level` (image or study)."""
        rows = self.predictions[self.predictions["level"] == level]
        return rows.drop(columns="level").reset_index(drop=True)

    @property
    def body_parts(self) -> list[str]:
        """The body parts tested, in BODY_PARTS order."""
        present = set(self.predictions["body_part"])
        return [part for part in BODY_PARTS if part in present]

    def thresholds(self) -> float | torch.Tensor:
        """The decision threshold in force: one number, or one per BODY_PARTS entry (as `figures` takes)."""
        overall = self.results.get(f"{STAGE}/study/{THRESHOLD_COLUMN}")
        if overall is not None:
            return float(overall)
        default = float(self.results.get(f"{STAGE}/threshold", 0.5))
        return torch.tensor(
            [float(self.results.get(f"{STAGE}/study/{THRESHOLD_COLUMN}/{part}", default)) for part in BODY_PARTS]
        )

    def data_root(self) -> Path | None:
        """The MURA-v1.1 folder the test images came from."""
        root = self.results.get("data_root") or self.datamodule.get("root")
        return Path(root) if root else None


def read_scored_run(folder: str | Path) -> ScoredRun:
    """The training run or evaluate output in `folder`; a MuraError when it holds no finished test."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MuraError(f"{folder} is not a folder: give a training run, an evaluate output or a compare output")
    results, unreadable = read_results(folder)
    if results is None:
        raise MuraError(
            f"{folder / RESULTS_FILE}: {unreadable or 'no such file'}; a report needs a finished training run with a "
            "test, or an evaluate output"
        )
    predictions_path = folder / predictions_file(STAGE)
    if not predictions_path.is_file():
        raise MuraError(
            f"{predictions_path} does not exist: train with test=true, or run `python -m mura_lightning.evaluate "
            "ckpt_path=...`, to write it"
        )
    predictions = pd.read_csv(predictions_path, dtype=TEXT_COLUMNS, keep_default_na=False, na_values={"prob": [""]})
    paths = [str(path) for path in results.get("ckpt_paths") or [results.get("ckpt_path")] if path]
    kind = EVALUATION if "ckpt_paths" in results else TRAINING_RUN
    trained_in = folder if kind == TRAINING_RUN else (training_folder(paths[0]) if paths else None)
    config, source = trained_config(trained_in, paths[0] if paths else None)
    return ScoredRun(
        folder=folder,
        kind=kind,
        results=results,
        predictions=predictions,
        checkpoints=[Checkpoint(path, file_digest(path)) for path in paths],
        config=config,
        config_source=source,
        evaluation_config=resolved_config(folder) if kind == EVALUATION else None,
        datamodule=datamodule_settings(paths[0]) if paths and Path(paths[0]).is_file() else {},
        training_overrides=training_overrides(trained_in, results if kind == TRAINING_RUN else None),
    )


def training_overrides(run_folder: Path | None, results: dict[str, Any] | None) -> list[str]:
    """The overrides a model was trained with: those its training recorded in results.json, else its run folder's
    .hydra/overrides.yaml; empty when neither is there."""
    if results is None and run_folder is not None:
        results, _ = read_results(run_folder)
    recorded = list((results or {}).get("overrides") or [])
    return recorded or (read_overrides(run_folder) if run_folder is not None else [])


def trained_config(run_folder: Path | None, ckpt_path: str | None) -> tuple[dict[str, Any] | None, str]:
    """The config a model was trained with, resolved, and where it was read: the training run's
    `.hydra/config.yaml`, else the checkpoint's saved model and data settings, else (None, why)."""
    if run_folder is not None and (config := resolved_config(run_folder)) is not None:
        return config, str(run_folder / HYDRA_DIR / "config.yaml")
    if ckpt_path and Path(ckpt_path).is_file():
        checkpoint = read_checkpoint(ckpt_path)
        saved = {"model": checkpoint["hyper_parameters"], "data": checkpoint.get("datamodule_hyper_parameters")}
        return saved, f"{ckpt_path}: its saved model and data settings (no training run folder with .hydra/)"
    return None, "neither the training run folder nor its checkpoint is there any more"


def resolved_config(folder: Path) -> dict[str, Any] | None:
    """A run folder's composed config (`.hydra/config.yaml`) with its interpolations resolved against the run's
    own Hydra settings (`.hydra/hydra.yaml`); unresolved where that fails; None without the file."""
    path = folder / HYDRA_DIR / "config.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.load(path)
    hydra_file = folder / HYDRA_DIR / "hydra.yaml"
    try:
        with _hydra_settings(OmegaConf.load(hydra_file) if hydra_file.is_file() else None):
            return OmegaConf.to_container(config, resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        log.warning("%s: some values could not be resolved (%s); shown as written", path, err)
        return OmegaConf.to_container(config, resolve=False)


@contextmanager
def _hydra_settings(hydra_config) -> Iterator[None]:
    """Resolve `${hydra:...}` against `hydra_config` (a run's hydra.yaml) inside the block, then restore the
    running app's own Hydra settings."""
    instance = HydraConfig.instance()
    saved = instance.cfg
    try:
        if hydra_config is not None:
            instance.cfg = hydra_config  # what `${hydra:...}` reads; set_config would want Hydra's typed node
        yield
    finally:
        instance.cfg = saved


def file_digest(path: str | Path) -> str | None:
    """The SHA-256 of a file, in hex; None when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
