"""DeLong's test for two correlated AUROCs (two models scored on the same cases), with the fast algorithm of Sun &
Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE Signal Processing Letters 21(11): O(n log n) through midranks.

For m positive scores X and n negative scores Y of one model, the placement values are
V10_i = (1/n) sum_j psi(X_i, Y_j) and V01_j = (1/m) sum_i psi(X_i, Y_j), psi(x, y) = [x > y] + [x = y] / 2, and
AUC = mean(V10) = mean(V01). With T_Z the midranks of the pooled scores and T_X (T_Y) those within the
positives (negatives): V10_i = (T_Z_i - T_X_i) / n, V01_j = 1 - (T_Z_{m+j} - T_Y_j) / m. The covariance of the
models' AUCs is S = S10 / m + S01 / n, S10 and S01 the sample covariances (between models) of the placement
values, and for B - A: z = (AUC_B - AUC_A) / sqrt(S_AA + S_BB - 2 S_AB), two-sided p = erfc(|z| / sqrt 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeLongResult:
    """Two AUCs on the same cases, their 2 x 2 covariance, and the z statistic and two-sided p-value of B - A
    (NaN when the labels hold one class)."""

    auc_a: float
    auc_b: float
    covariance: np.ndarray
    z: float
    p_value: float


def midranks(values: np.ndarray) -> np.ndarray:
    """The 1-based ranks of `values`, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The AUCs of k models (`scores`: k x n cases, `labels`: n of 0/1) and their k x k DeLong covariance;
    NaN when the labels hold one class."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    positive = np.asarray(labels) == 1
    m, n = int(positive.sum()), int((~positive).sum())
    k = len(scores)
    if not (m and n):
        return np.full(k, np.nan), np.full((k, k), np.nan)
    x, y = scores[:, positive], scores[:, ~positive]
    pooled = np.array([midranks(row) for row in np.hstack([x, y])])
    within_x = np.array([midranks(row) for row in x])
    within_y = np.array([midranks(row) for row in y])
    v10 = (pooled[:, :m] - within_x) / n
    v01 = 1.0 - (pooled[:, m:] - within_y) / m
    aucs = v10.mean(axis=1)
    s10 = np.cov(v10).reshape(k, k) if m > 1 else np.zeros((k, k))
    s01 = np.cov(v01).reshape(k, k) if n > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong's test of AUC_B = AUC_A for two models' scores of the same cases (module docstring). Two models
    whose difference has no variance get z = 0 and p = 1 when their AUCs are equal (e.g. the same scores)."""
    aucs, covariance = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    difference = aucs[1] - aucs[0]
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if np.isnan(difference):
        z = p_value = float("nan")
    elif variance <= 0:
        z, p_value = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    else:
        z = float(difference / math.sqrt(variance))
        p_value = math.erfc(abs(z) / math.sqrt(2))
    return DeLongResult(float(aucs[0]), float(aucs[1]), covariance, z, p_value)
