"""The report's figures, drawn by the project's own figure functions and torchmetrics: the overall confusion matrix,
ROC, PR and reliability diagram (`callbacks.metrics.figures`, as TensorBoard and evaluate show them), ROC and PR
curves with one line per body part, and a confusion matrix per body part; as PNG data URIs."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torchmetrics.classification import BinaryConfusionMatrix, BinaryPrecisionRecallCurve, BinaryROC
from torchmetrics.utilities.plot import plot_curve

from mura_lightning.callbacks.metrics import figures
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.evaluation.metrics import CLASS_NAMES, PredictionTable, row_thresholds

CURVES = {  # name -> (torchmetrics curve, axis labels, title)
    "roc_by_body_part": (BinaryROC, ("false positive rate", "true positive rate"), "ROC by body part"),
    "pr_by_body_part": (BinaryPrecisionRecallCurve, ("recall", "precision"), "precision-recall by body part"),
}
CONFUSION_COLUMNS = 4  # confusion matrices per row of the per-body-part grid
PANEL_INCHES = 2.6


def study_table(studies: pd.DataFrame) -> PredictionTable:
    """The study rows of a prediction file (body_part, label, prob) as a PredictionTable."""
    part_index = {part: i for i, part in enumerate(BODY_PARTS)}
    count = len(studies)
    return PredictionTable(
        probs=torch.tensor(studies["prob"].to_numpy(), dtype=torch.float32),
        labels=torch.tensor(studies["label"].to_numpy(), dtype=torch.float32),
        studies=torch.arange(count),
        body_parts=torch.tensor(studies["body_part"].map(part_index).to_numpy()),
        image_ids=torch.arange(count),
    )


def report_figures(studies: pd.DataFrame, threshold: float | torch.Tensor, title: str, dpi: int) -> dict[str, str]:
    """Every figure of the report as a PNG data URI, by name: confusion_matrix, roc, pr and reliability of all
    studies, roc_by_body_part, pr_by_body_part and confusion_by_body_part."""
    table = study_table(studies)
    drawn = figures(table, threshold, title)
    drawn.update(curves_by_body_part(table))
    drawn["confusion_by_body_part"] = confusion_by_body_part(table, threshold)
    uris = {}
    for name, figure in drawn.items():
        uris[name] = png_data_uri(figure, dpi)
        plt.close(figure)
    return uris


def _parts(table: PredictionTable) -> list[tuple[str, PredictionTable]]:
    return [(BODY_PARTS[part], table.select(table.body_parts == part)) for part in table.body_parts.unique().tolist()]


def curves_by_body_part(table: PredictionTable) -> dict[str, plt.Figure]:
    """ROC and precision-recall curves with one line per body part (labelled with its area), drawn by torchmetrics;
    parts whose studies hold one class are left out."""
    drawn = {}
    parts = [(name, part) for name, part in _parts(table) if part.labels.unique().numel() == 2]
    for name, (metric, axis_labels, title) in CURVES.items():
        xs, ys, thresholds, areas = [], [], [], []
        for _, part in parts:
            curve = metric(sync_on_compute=False)
            curve.update(part.probs, part.labels.long())
            x, y, t = curve.compute()
            x, y = (y, x) if metric is BinaryPrecisionRecallCurve else (x, y)  # recall on the x axis
            xs.append(x)
            ys.append(y)
            thresholds.append(t)
            areas.append(torch.trapezoid(y, x).abs())
        figure, axis = plt.subplots(figsize=(5, 5))
        if parts:
            plot_curve(
                (xs, ys, thresholds),
                score=torch.stack(areas),
                ax=axis,
                label_names=axis_labels,
                name=title,
                labels=[part_name for part_name, _ in parts],
            )
        axis.set_title(title)
        drawn[name] = figure
    return drawn


def confusion_by_body_part(table: PredictionTable, threshold: float | torch.Tensor) -> plt.Figure:
    """A grid of confusion matrices, one per body part, at each part's threshold in force."""
    parts = _parts(table)
    columns = min(CONFUSION_COLUMNS, max(len(parts), 1))
    rows = max(1, math.ceil(len(parts) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows), squeeze=False)
    for axis in axes.flat[len(parts) :]:
        axis.set_axis_off()
    for axis, (name, part) in zip(axes.flat, parts, strict=False):
        confusion = BinaryConfusionMatrix(sync_on_compute=False)
        confusion.update((part.probs > row_thresholds(threshold, part.body_parts)).long(), part.labels.long())
        confusion.plot(ax=axis, labels=list(CLASS_NAMES))
        axis.set_title(name)
    figure.tight_layout()
    return figure


def png_data_uri(figure: plt.Figure, dpi: int) -> str:
    """A matplotlib figure as a `data:image/png;base64,...` URI, for a page that needs no other file."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return png_bytes_uri(buffer.getvalue())


def png_bytes_uri(data: bytes) -> str:
    """PNG bytes as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
