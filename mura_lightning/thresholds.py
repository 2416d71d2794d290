"""Decision thresholds: the settings (conf/metrics), tuning one on validation predictions, and choosing the one in
force for a model or an ensemble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics.classification import BinaryPrecisionRecallCurve, BinaryROC

from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.metrics import LEVELS, PredictionTable

THRESHOLD_METHODS = ("youden", "f1")


@dataclass(frozen=True)
class MetricSettings:
    """How predictions become decisions: the threshold, and whether to tune it on val (see conf/metrics)."""

    threshold: float = 0.5
    tune_threshold: bool = False
    threshold_method: str = "youden"
    threshold_level: str = "study"
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


def _strictly_below(probs: torch.Tensor, at_least: float) -> float:
    """A threshold t with `p > t` exactly when `p >= at_least` for every p in probs: halfway to the next
    lower probability (torchmetrics' curves count p >= t as positive; decisions here use p > t)."""
    lower = probs[probs < at_least]
    return (at_least + float(lower.max())) / 2 if len(lower) else at_least / 2
