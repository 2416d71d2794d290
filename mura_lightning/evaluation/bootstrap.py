"""Patient-clustered, body-part-stratified bootstrap of study-level metrics, vectorised over the resamples.

A resample draws, within each body part, as many patients as the part has, with replacement, and keeps all of
their studies in that part: studies of one patient are correlated, so the patient is the unit that was sampled.
A patient with studies in two body parts is a separate cluster in each part (the parts are resampled
independently, which keeps every part's size fixed). The draws are a (B x n_studies) weight matrix `w`: `w[b, i]`
is how many times study i's patient was drawn in resample b. Every metric of every resample is then a weighted
statistic of the one table of predictions:

- confusion counts: TP_b = sum_i w[b, i] y_i p_i, FP_b = sum_i w[b, i] (1 - y_i) p_i, FN_b, TN_b likewise (one
  matrix product), where y is the label and p the decision at the threshold in force (abnormal = 1);
- sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), accuracy = (TP + TN) / N,
  F1 (abnormal) = 2 TP / (2 TP + FP + FN);
- Cohen's kappa = (p_o - p_e) / (1 - p_e), p_o = (TP + TN) / N, p_e = ((TP + FP)(TP + FN) + (TN + FN)(TN + FP)) / N^2;
- AUROC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (sum_pos w)(sum_neg w), the weighted
  Mann-Whitney statistic, from cumulative sums over the scores sorted once.

A value that is undefined in a resample (a zero denominator: no abnormal study drawn for sensitivity, one class
of labels and decisions alike for kappa, one class for AUROC) is NaN there, and the percentile bounds are taken
over the resamples where it is defined (`np.nanpercentile`); the bound is NaN only where no resample defines it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

METRICS = ("kappa", "auroc", "sensitivity", "specificity", "accuracy", "f1_abnormal")
OVERALL = "overall"
COLUMNS = ("patient", "body_part", "label", "prob", "pred")
MIN_SAMPLES = 100


@dataclass(frozen=True)
class BootstrapSettings:
    """The `metrics.bootstrap` settings (conf/metrics): how many resamples, the interval's confidence and the
    random seed. Construction refuses samples below 100 and a confidence outside (0, 1)."""

    samples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < MIN_SAMPLES:
            raise MuraError(
                f"metrics.bootstrap.samples={self.samples!r} must be a whole number of at least {MIN_SAMPLES} "
                "(2000 gives stable 95 % bounds)"
            )
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)):
            raise MuraError(f"metrics.bootstrap.confidence={self.confidence!r} must be a number in (0, 1), e.g. 0.95")
        if not 0.0 < self.confidence < 1.0:
            raise MuraError(f"metrics.bootstrap.confidence={self.confidence!r} must be in (0, 1), e.g. 0.95")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MuraError(f"metrics.bootstrap.seed={self.seed!r} must be a whole number >= 0")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> BootstrapSettings:
        """The settings of a `metrics.bootstrap` config node (defaults for missing keys); a MuraError naming an
        unknown key or a bad value."""
        values = dict(node or {})
        unknown = sorted(set(values) - {"samples", "confidence", "seed"})
        if unknown:
            raise MuraError(f"metrics.bootstrap has unknown keys {unknown}: use samples, confidence and seed")
        return cls(**values)


def check_frame(frame: pd.DataFrame) -> None:
    """A MuraError unless `frame` has the study-level columns patient, body_part, label (0/1), prob and pred
    (0/1), and at least one row."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise MuraError(f"the study table lacks the columns {missing}; it needs {list(COLUMNS)}")
    if frame.empty:
        raise MuraError("the study table is empty: there is nothing to bootstrap")
    for column in ("label", "pred"):
        values = set(pd.unique(frame[column]))
        if not values <= {0, 1}:
            raise MuraError(f"the study table's {column} column holds {sorted(values - {0, 1})[:3]}; it must be 0 or 1")


def body_parts_of(frame: pd.DataFrame) -> list[str]:
    """The body parts of `frame` in BODY_PARTS order (unknown names after them, sorted)."""
    present = set(frame["body_part"])
    return [part for part in BODY_PARTS if part in present] + sorted(present - set(BODY_PARTS))


def bootstrap_weights(frame: pd.DataFrame, samples: int, seed: int) -> np.ndarray:
    """The (samples x len(frame)) matrix of study weights: in each resample, each body part's patients drawn with
    replacement as many times as the part has patients (multinomial counts), each study weighted by how often
    its patient was drawn within its body part. Parts are drawn in BODY_PARTS order from one generator seeded by
    `seed`, so the same frame and seed give the same matrix."""
    check_frame(frame)
    rng = np.random.default_rng(seed)
    weights = np.zeros((samples, len(frame)))
    for part in body_parts_of(frame):
        columns = np.flatnonzero((frame["body_part"] == part).to_numpy())
        codes, patients = pd.factorize(frame["patient"].to_numpy()[columns])
        counts = rng.multinomial(len(patients), np.full(len(patients), 1.0 / len(patients)), size=samples)
        weights[:, columns] = counts[:, codes]
    return weights


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each weight row (B x n): sum over positive i and negative j of w_i w_j ([s_i > s_j] + [s_i = s_j]
    / 2), divided by (sum of positive weights)(sum of negative weights); NaN for a row without both classes."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    positive = labels[order] == 1
    sorted_weights = weights[:, order]
    pos = np.add.reduceat(np.where(positive, sorted_weights, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, sorted_weights), starts, axis=1)
    negatives_below = np.cumsum(neg, axis=1) - neg
    pairs = (pos * (negatives_below + neg / 2)).sum(axis=1)
    return _ratio(pairs, pos.sum(axis=1) * neg.sum(axis=1))


def metric_values(frame: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of METRICS for each weight row (B x len(frame)), as a (B,) array (formulas in the module
    docstring); NaN where a metric is undefined for a row. A row of ones gives the metrics of `frame` itself."""
    labels = frame["label"].to_numpy(dtype=float)
    preds = frame["pred"].to_numpy(dtype=float)
    cells = np.stack([labels * preds, (1 - labels) * preds, labels * (1 - preds), (1 - labels) * (1 - preds)], 1)
    tp, fp, fn, tn = (weights @ cells).T
    total = tp + fp + fn + tn
    observed = _ratio(tp + tn, total)
    expected = _ratio((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), total**2)
    return {
        "kappa": _ratio(observed - expected, 1 - expected),
        "auroc": weighted_auroc(labels, frame["prob"].to_numpy(dtype=float), weights),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": observed,
        "f1_abnormal": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def percentile_bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of the defined (non-NaN) values (numpy's
    linear interpolation); NaN bounds when no value is defined."""
    defined = values[~np.isnan(values)]
    if not len(defined):
        return float("nan"), float("nan")
    low, high = np.percentile(defined, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def _groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Column positions of each body part, then of `overall` (every study)."""
    groups = {part: np.flatnonzero((frame["body_part"] == part).to_numpy()) for part in body_parts_of(frame)}
    return {**groups, OVERALL: np.arange(len(frame))}


def _warn_one_class(frame: pd.DataFrame, part: str, rows: np.ndarray) -> None:
    if frame["label"].iloc[rows].nunique() < 2:
        log.warning("%s: its studies hold one class only, so its AUROC and AUROC interval are NaN", part)


def intervals(frame: pd.DataFrame, *, samples: int, confidence: float, seed: int) -> pd.DataFrame:
    """Percentile bootstrap intervals of METRICS for each body part and `overall`: a DataFrame indexed by
    `body_part` with columns `{metric}` (the value on `frame`), `{metric}_ci_low` and `{metric}_ci_high`. The
    overall resamples are the union of the body parts' (the same draws). A body part of one class has NaN AUROC
    bounds, with a warning naming it."""
    settings = BootstrapSettings(samples, confidence, seed)
    weights = bootstrap_weights(frame, settings.samples, settings.seed)
    rows = {}
    for part, columns in _groups(frame).items():
        _warn_one_class(frame, part, columns)
        subset = frame.iloc[columns]
        point = metric_values(subset, np.ones((1, len(columns))))
        resampled = metric_values(subset, weights[:, columns])
        row = {}
        for metric in METRICS:
            low, high = percentile_bounds(resampled[metric], settings.confidence)
            row.update({metric: float(point[metric][0]), f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        rows[part] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("body_part")


def check_paired(first: pd.DataFrame, second: pd.DataFrame) -> None:
    """A MuraError unless the two study tables list the same studies in the same order: the same patient, body
    part and label on each row."""
    check_frame(first)
    check_frame(second)
    if len(first) != len(second):
        raise MuraError(f"the paired study tables differ in length: {len(first)} and {len(second)} studies")
    for column in ("patient", "body_part", "label"):
        differ = np.flatnonzero(first[column].to_numpy() != second[column].to_numpy())
        if len(differ):
            raise MuraError(f"the paired study tables disagree on {column} in {len(differ)} rows (first: {differ[0]})")


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0: 2 min(k_le + 1, k_ge + 1) / (B + 1), capped at 1,
    where k_le (k_ge) counts the defined resampled differences <= 0 (>= 0) and B the defined resamples. The +1
    (Davison & Hinkley) keeps it above 0 with a finite B: the smallest value is 2 / (B + 1). NaN when no
    resample defines the difference."""
    defined = differences[~np.isnan(differences)]
    if not len(defined):
        return float("nan")
    below, above = np.sum(defined <= 0), np.sum(defined >= 0)
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(defined) + 1)))


PAIRED_COLUMNS = ("body_part", "metric", "a", "b", "difference", "ci_low", "ci_high", "p_bootstrap")


def paired_intervals(
    first: pd.DataFrame,
    second: pd.DataFrame,
    *,
    samples: int,
    confidence: float,
    seed: int,
    metrics: tuple[str, ...] = METRICS,
) -> pd.DataFrame:
    """Model B (`second`) against model A (`first`) on the same studies (rows aligned, see `check_paired`): for
    each body part and `overall` and each metric, A's and B's values, the difference B - A, its percentile
    interval over the same patient resamples applied to both, and its two-sided bootstrap p-value
    (`bootstrap_p_value`). One row per (body_part, metric), columns PAIRED_COLUMNS."""
    settings = BootstrapSettings(samples, confidence, seed)
    check_paired(first, second)
    weights = bootstrap_weights(first, settings.samples, settings.seed)
    rows = []
    for part, columns in _groups(first).items():
        _warn_one_class(first, part, columns)
        ones = np.ones((1, len(columns)))
        subsets = first.iloc[columns], second.iloc[columns]
        point_a, point_b = (metric_values(subset, ones) for subset in subsets)
        drawn_a, drawn_b = (metric_values(subset, weights[:, columns]) for subset in subsets)
        for metric in metrics:
            differences = drawn_b[metric] - drawn_a[metric]
            low, high = percentile_bounds(differences, settings.confidence)
            a, b = float(point_a[metric][0]), float(point_b[metric][0])
            rows.append((part, metric, a, b, b - a, low, high, bootstrap_p_value(differences)))
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
