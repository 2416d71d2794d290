"""Decision thresholds: the settings (conf/metrics), tuning one on validation predictions, and choosing the one in
force for a model or an ensemble."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics.classification import BinaryPrecisionRecallCurve, BinaryROC

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.evaluation.calibration import check_calibration
from mura_lightning.evaluation.metrics import LEVELS, PredictionTable

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "f1")


@dataclass(frozen=True)
class MetricSettings:
    """How predictions become decisions: the threshold, whether to tune it on val (one for all, or one per body
    part), and whether to calibrate the probabilities first (see conf/metrics)."""

    threshold: float = 0.5
    tune_threshold: bool = False
    threshold_method: str = "youden"
    threshold_level: str = "study"
    threshold_per_body_part: bool = False
    calibration: str = "none"
    bootstrap: Mapping[str, Any] | None = None  # metrics.bootstrap: checked here, used by evaluation.bootstrap

    def __post_init__(self) -> None:
        BootstrapSettings.from_config(self.bootstrap)
        check_threshold(self.threshold, "metrics.threshold")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise MuraError(
                f"metrics.threshold_method={self.threshold_method!r} is not one of {', '.join(THRESHOLD_METHODS)}"
            )
        if self.threshold_level not in LEVELS:
            raise MuraError(f"metrics.threshold_level={self.threshold_level!r} is not one of {', '.join(LEVELS)}")
        if self.threshold_per_body_part and not self.tune_threshold:
            raise MuraError(
                "metrics.threshold_per_body_part=true tunes one threshold per body part on val, so it needs "
                "metrics.tune_threshold=true as well (or set threshold_per_body_part=false)"
            )
        check_calibration(self.calibration)


def check_threshold(value: float, name: str) -> float:
    """`value` when it is a probability threshold in [0, 1]; a MuraError naming the setting otherwise."""
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise MuraError(f"{name}={value!r} must be a number in [0, 1]")
    return float(value)


def threshold_in_force(tuned: Sequence[float], default: float, override: float | None) -> float:
    """The threshold decisions use: `override` when given; else a single model's own (tuned) threshold; else,
    for an ensemble, `default` (its members were tuned on their own predictions, not on the average)."""
    if override is not None:
        return check_threshold(override, "threshold")
    return float(tuned[0]) if len(tuned) == 1 else default


def tune_threshold(table: PredictionTable, method: str) -> float:
    """The threshold (abnormal iff prob > threshold) that maximises Youden's J (sensitivity + specificity - 1)
    or F1 of the abnormal class on `table`."""
    if method not in THRESHOLD_METHODS:
        raise MuraError(f"metrics.threshold_method={method!r} is not one of {', '.join(THRESHOLD_METHODS)}")
    labels = table.labels.long()
    if labels.unique().numel() < 2:
        raise MuraError("cannot tune a threshold on predictions of one class only; add data of both classes")
    if method == "youden":
        fpr, tpr, thresholds = BinaryROC(thresholds=None, sync_on_compute=False)(table.probs, labels)
        best = thresholds[torch.argmax(tpr - fpr)]
    else:
        curve = BinaryPrecisionRecallCurve(thresholds=None, sync_on_compute=False)
        precision, recall, thresholds = curve(table.probs, labels)
        f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp(min=1e-12)
        best = thresholds[torch.argmax(f1)]
    return _strictly_below(table.probs, float(best))


def tune_thresholds_per_part(table: PredictionTable, method: str, fallback: float) -> torch.Tensor:
    """One tuned threshold per BODY_PARTS entry (see `tune_threshold`), each on the rows of its body part; a
    part whose rows hold one class, or none, gets `fallback`, with a warning naming the parts that have rows."""
    thresholds = torch.full((len(BODY_PARTS),), float(fallback))
    for index, part in enumerate(BODY_PARTS):
        rows = table.select(table.body_parts == index)
        if rows.labels.unique().numel() == 2:
            thresholds[index] = tune_threshold(rows, method)
        elif len(rows):
            log.warning(
                "%s: its validation predictions hold one class only, so it keeps the global tuned threshold %.4f",
                part,
                fallback,
            )
    return thresholds


def _strictly_below(probs: torch.Tensor, at_least: float) -> float:
    """A threshold t with `p > t` exactly when `p >= at_least` for every p in probs: halfway to the next
    lower probability (torchmetrics' curves count p >= t as positive; decisions here use p > t)."""
    lower = probs[probs < at_least]
    return (at_least + float(lower.max())) / 2 if len(lower) else at_least / 2
