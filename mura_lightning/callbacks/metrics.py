"""MetricsReport: confusion-matrix, ROC, precision-recall and reliability figures in TensorBoard."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import BinaryConfusionMatrix, BinaryPrecisionRecallCurve, BinaryROC

from mura_lightning.callbacks.layout import figure_tag
from mura_lightning.evaluation.calibration import reliability_figure
from mura_lightning.evaluation.metrics import CLASS_NAMES, PredictionTable, row_thresholds

log = logging.getLogger(__name__)


class MetricsReport(Callback):
    """At the end of validation (every `every_n_epochs` epochs) and of testing, logs for each level a confusion
    matrix, a ROC curve, a precision-recall curve and a reliability diagram as TensorBoard figures, tagged by
    stage, then kind, then level (`figure_tag`: `{stage}/2_confusion_matrix/{level}`, `3_roc`, `4_pr`,
    `5_reliability`). The final test's files (the
    per-body-part tables with intervals, the prediction files) are written by train, as evaluate writes them
    (mura_lightning/evaluation/outputs.py).

    It reads what the MURAClassifier computed for the stage: `last_predictions`.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or "val" not in pl_module.last_predictions:
            return
        if trainer.state.fn != "fit" or (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log_figures(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "test" not in pl_module.last_predictions:
            return
        self._log_figures(trainer, pl_module, "test")

    def _log_figures(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers or not trainer.is_global_zero:
            return
        threshold = pl_module.decision_thresholds(stage)
        for level, table in pl_module.last_predictions[stage].items():
            for name, figure in figures(table, threshold, f"{stage} {level}").items():
                for writer in writers:
                    writer.add_figure(figure_tag(stage, name, level), figure, global_step=trainer.global_step)
                plt.close(figure)


def figures(table: PredictionTable, threshold: float | torch.Tensor, title: str) -> dict[str, plt.Figure]:
    """Confusion matrix (at `threshold`: one number, or one per BODY_PARTS entry), ROC and precision-recall
    figures of a prediction table, drawn by torchmetrics, and its reliability diagram. Runs on one process, so
    the metrics must not sync across processes."""
    labels = table.labels.long()
    local = {"sync_on_compute": False}
    confusion = BinaryConfusionMatrix(**local)
    confusion.update((table.probs > row_thresholds(threshold, table.body_parts)).long(), labels)
    plots = {"confusion_matrix": confusion.plot(labels=list(CLASS_NAMES))[0]}
    for name, curve in (("roc", BinaryROC(**local)), ("pr", BinaryPrecisionRecallCurve(**local))):
        curve.update(table.probs, labels)
        plots[name] = curve.plot(score=True)[0]
    for name, figure in plots.items():
        figure.axes[0].set_title(f"{title}: {name.replace('_', ' ')}")
    plots["reliability"] = reliability_figure(table.probs, table.labels, title)
    return plots
