"""DeLong's test (fast midrank algorithm) against the placement-value definition written out directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mura_lightning.evaluation.delong import delong_covariance, delong_test, midranks


def psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """psi(x_i, y_j) = 1 if x_i > y_j, 1/2 if equal, 0 otherwise, as an m x n matrix."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def quadratic_delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and covariance from the O(m n) placement values of DeLong, DeLong & Clarke-Pearson (1988)."""
    positive = labels == 1
    m, n = positive.sum(), (~positive).sum()
    v10 = np.array([psi(row[positive], row[~positive]).mean(axis=1) for row in scores])
    v01 = np.array([psi(row[positive], row[~positive]).mean(axis=0) for row in scores])
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return v10.mean(axis=1), s10 / m + s01 / n


def two_models(seed: int, cases: int = 300, ties: bool = True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, cases)
    shared = rng.normal(size=cases)
    scores_a = labels * 1.0 + shared + rng.normal(size=cases)
    scores_b = labels * 1.4 + shared + rng.normal(size=cases)
    if ties:
        scores_a, scores_b = np.round(scores_a, 1), np.round(scores_b, 1)
    return labels, scores_a, scores_b


def test_midranks_average_tied_ranks():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize("ties", [True, False])
def test_fast_delong_equals_the_quadratic_definition_and_sklearn(ties):
    labels, scores_a, scores_b = two_models(0, ties=ties)
    aucs, covariance = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    expected_aucs, expected_covariance = quadratic_delong(labels, np.vstack([scores_a, scores_b]))
    np.testing.assert_allclose(aucs, expected_aucs, rtol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-10)
    assert aucs.tolist() == pytest.approx([roc_auc_score(labels, scores_a), roc_auc_score(labels, scores_b)])
    result = delong_test(labels, scores_a, scores_b)
    variance = expected_covariance[0, 0] + expected_covariance[1, 1] - 2 * expected_covariance[0, 1]
    z = (expected_aucs[1] - expected_aucs[0]) / math.sqrt(variance)
    assert result.z == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))), rel=1e-9)


def test_a_clearly_better_model_is_significant_and_a_model_against_itself_is_not():
    labels, scores_a, scores_b = two_models(1, cases=600)
    assert delong_test(labels, scores_a, scores_b).p_value < 0.01
    same = delong_test(labels, scores_a, scores_a)
    assert (same.z, same.p_value) == (0.0, 1.0)


def test_one_class_gives_nan():
    result = delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))
    assert math.isnan(result.auc_a) and math.isnan(result.p_value)
