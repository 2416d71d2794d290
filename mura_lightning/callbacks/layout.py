"""TensorBoard in order: the Custom Scalars tab's charts (metrics with their stages and levels together, each
metric's body parts together, loss and learning rate), and figure tags that sort by stage, then kind."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.evaluation.metrics import LEVELS
from mura_lightning.models.module import EVAL_STAGES

# The Images tab groups tags by their first part (the stage) and sorts each group by name: a number before each
# kind puts CAM grids first, then confusion matrices, ROC and PR curves, and reliability diagrams.
FIGURE_KINDS = ("cam", "confusion_matrix", "roc", "pr", "reliability")
LOSS_TAGS = ("train/loss_epoch", "val/loss")
LEARNING_RATE = "^lr-"  # Lightning's LearningRateMonitor logs `lr-<optimizer>`
CAM_SCORES = ("pointing_game", "iou", "box_area")
DECISION_TAGS = ("tuned_threshold", "threshold", "temperature")


def figure_tag(stage: str, kind: str, level: str | None = None) -> str:
    """The TensorBoard tag of a figure: `{stage}/{n}_{kind}` (CAM grids) or `{stage}/{n}_{kind}/{level}`, `n` the
    kind's place in FIGURE_KINDS, so that the Images tab shows each stage's figures in that order."""
    tag = f"{stage}/{FIGURE_KINDS.index(kind) + 1}_{kind}"
    return f"{tag}/{level}" if level else tag


def _any_of(names: Sequence[str]) -> str:
    return "(" + "|".join(re.escape(name) for name in names) + ")"


def custom_scalars_layout(metrics: Sequence[str], body_parts: Sequence[str] = BODY_PARTS) -> dict:
    """The Custom Scalars layout (`SummaryWriter.add_custom_scalars`' argument; each tag a regular expression): one
    chart per metric with its stages (train, val, test) and levels together, one per metric with `body_parts` (val,
    study level), loss (train and val) and learning rate, CAM localisation, and the decision threshold and
    temperature."""
    stages, levels, parts = _any_of(("train", *EVAL_STAGES)), _any_of(LEVELS), _any_of(body_parts)
    return {
        "loss and learning rate": {
            "loss (train and val)": ["Multiline", [f"^{_any_of(LOSS_TAGS)}$"]],
            "learning rate": ["Multiline", [LEARNING_RATE]],
        },
        "metrics: every stage and level": {
            metric: ["Multiline", [f"^{stages}/{levels}/{re.escape(metric)}$"]] for metric in metrics
        },
        "metrics by body part: val, study level": {
            f"{metric} by body part": ["Multiline", [f"^val/study/{re.escape(metric)}/{parts}$"]] for metric in metrics
        },
        "CAM localisation and decisions": {
            "CAM localisation": ["Multiline", [f"^{stages}/cam/{_any_of(CAM_SCORES)}$"]],
            "threshold and temperature": ["Multiline", [f"^{stages}/{_any_of(DECISION_TAGS)}$"]],
        },
    }


class TensorBoardLayout(Callback):
    """Writes the Custom Scalars layout (`custom_scalars_layout` of `metrics` and the datamodule's body parts) once
    into every TensorBoard logger's run, on rank 0, when fitting or testing starts."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = list(metrics)
        self._written: set[str] = set()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        body_parts = getattr(trainer.datamodule, "body_parts", None) or BODY_PARTS
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and logger.log_dir not in self._written:
                logger.experiment.add_custom_scalars(custom_scalars_layout(self.metrics, body_parts))
                self._written.add(logger.log_dir)
