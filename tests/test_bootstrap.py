"""The patient bootstrap: the same bounds as scikit-learn on the same resamples, coverage of known population
values, the one-class and undefined cases, settings, and the paired version."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from bootstrap import coverage, simulated_studies  # benchmarks/bootstrap.py: the simulation the figures come from
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score, roc_auc_score

from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import (
    METRICS,
    OVERALL,
    BootstrapSettings,
    bootstrap_p_value,
    bootstrap_weights,
    intervals,
    metric_values,
    paired_intervals,
)

CONFIDENCE = 0.95


def sklearn_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The six metrics by scikit-learn, NaN where undefined."""
    labels, preds = frame["label"], frame["pred"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, preds, replace_undefined_by=np.nan)
        auroc = roc_auc_score(labels, frame["prob"]) if labels.nunique() == 2 else np.nan
    return {
        "kappa": kappa,
        "auroc": auroc,
        "sensitivity": recall_score(labels, preds, pos_label=1, zero_division=np.nan),
        "specificity": recall_score(labels, preds, pos_label=0, zero_division=np.nan),
        "accuracy": accuracy_score(labels, preds),
        "f1_abnormal": f1_score(labels, preds, pos_label=1, zero_division=np.nan),
    }


def slow_intervals(frame: pd.DataFrame, weights: np.ndarray) -> dict[tuple[str, str], tuple[float, float]]:
    """Percentile bounds from scikit-learn looped over the resamples that the weight matrix encodes (study i
    repeated w[b, i] times), NaN resamples left out as np.nanpercentile does."""
    groups = {part: frame.index[frame["body_part"] == part] for part in frame["body_part"].unique()}
    groups[OVERALL] = frame.index
    values = {(part, metric): [] for part in groups for metric in METRICS}
    for row in weights.astype(int):
        for part, index in groups.items():
            drawn = frame.loc[np.repeat(index, row[index])]
            for metric, value in sklearn_metrics(drawn).items():
                values[part, metric].append(value)
    percentiles = [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2]
    return {key: tuple(np.nanpercentile(np.array(v, dtype=float), percentiles)) for key, v in values.items()}


def test_bounds_equal_scikit_learn_on_the_same_resamples():
    rng = np.random.default_rng(3)
    frame = simulated_studies(rng, {"hand": 40, "wrist": 30, "finger": 4})
    samples, seed = 100, 11
    weights = bootstrap_weights(frame, samples, seed)
    expected = slow_intervals(frame, weights)
    table = intervals(frame, samples=samples, confidence=CONFIDENCE, seed=seed)
    assert list(table.index) == ["finger", "hand", "wrist", OVERALL]
    for (part, metric), (low, high) in expected.items():
        assert table.loc[part, f"{metric}_ci_low"] == pytest.approx(low, rel=1e-9, nan_ok=True), (part, metric)
        assert table.loc[part, f"{metric}_ci_high"] == pytest.approx(high, rel=1e-9, nan_ok=True), (part, metric)
        point = sklearn_metrics(frame[frame["body_part"] == part] if part != OVERALL else frame)[metric]
        assert table.loc[part, metric] == pytest.approx(point, rel=1e-9), (part, metric)
    # the tiny part has resamples without an abnormal (or normal) study: those are left out of its percentiles
    finger = metric_values(frame[frame["body_part"] == "finger"], weights[:, (frame["body_part"] == "finger").values])
    assert np.isnan(finger["auroc"]).any() and not np.isnan(finger["auroc"]).all()
    assert np.isfinite(table.loc["finger", "auroc_ci_low"])


def test_weights_resample_patients_within_body_parts():
    frame = simulated_studies(np.random.default_rng(0), {"hand": 30, "elbow": 20})
    weights = bootstrap_weights(frame, 200, 5)
    for part, count in (("hand", 30), ("elbow", 20)):
        rows = frame[frame["body_part"] == part]
        first = ~rows["patient"].duplicated()
        # every resample draws as many patients as the part has; a patient's studies share its count
        assert (weights[:, first[first].index].sum(axis=1) == count).all()
        for _, studies in rows.groupby("patient").groups.items():
            assert (weights[:, studies] == weights[:, studies[:1]]).all()
    assert np.array_equal(weights, bootstrap_weights(frame, 200, 5))
    assert not np.array_equal(weights, bootstrap_weights(frame, 200, 6))


def test_a_patient_in_two_body_parts_is_drawn_separately_in_each():
    frame = pd.DataFrame(
        {
            "patient": [1, 1, 2, 3],
            "body_part": ["hand", "wrist", "hand", "wrist"],
            "label": [1, 0, 0, 1],
            "prob": [0.9, 0.2, 0.3, 0.7],
            "pred": [1, 0, 0, 1],
        }
    )
    weights = bootstrap_weights(frame, 500, 0)
    assert not np.array_equal(weights[:, 0], weights[:, 1])
    assert (weights[:, [0, 2]].sum(axis=1) == 2).all() and (weights[:, [1, 3]].sum(axis=1) == 2).all()


def test_95_percent_intervals_cover_the_population_values():
    covered = coverage(repetitions=80, patients=120, samples=400, seed=0)
    for metric, share in covered.items():
        assert 0.87 <= share <= 1.0, (metric, share)  # 80 repetitions: +-2.4 % standard error around 0.95


def test_a_body_part_of_one_class_gets_a_nan_auroc_interval_and_a_warning(caplog):
    rng = np.random.default_rng(1)
    frame = simulated_studies(rng, {"hand": 30, "wrist": 25})
    frame.loc[frame["body_part"] == "wrist", "label"] = 1
    with caplog.at_level(logging.WARNING):
        table = intervals(frame, samples=100, confidence=CONFIDENCE, seed=0)
    assert [r.getMessage() for r in caplog.records if "wrist" in r.getMessage()] == [
        "wrist: its studies hold one class only, so its AUROC and AUROC interval are NaN"
    ]
    assert table.loc["wrist", ["auroc", "auroc_ci_low", "auroc_ci_high"]].isna().all()
    assert table.loc["wrist", ["sensitivity", "sensitivity_ci_low", "accuracy_ci_high"]].notna().all()
    assert table.loc[["hand", OVERALL], ["auroc_ci_low", "auroc_ci_high"]].notna().all().all()


def test_kappa_undefined_in_some_resamples_is_left_out_of_the_percentiles():
    # two patients: a resample of two copies of the normal patient has one class of labels and decisions alike
    frame = pd.DataFrame(
        {"patient": ["a", "b"], "body_part": ["hand"] * 2, "label": [0, 1], "prob": [0.2, 0.8], "pred": [0, 1]}
    )
    weights = bootstrap_weights(frame, 400, 0)
    kappas = metric_values(frame, weights)["kappa"]
    undefined = np.isnan(kappas)
    assert undefined.any() and not undefined.all()
    assert np.array_equal(undefined, (weights[:, 0] == 0) | (weights[:, 1] == 0))
    table = intervals(frame, samples=400, confidence=CONFIDENCE, seed=0)
    assert table.loc["hand", "kappa_ci_low"] == table.loc["hand", "kappa_ci_high"] == 1.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"samples": 99}, "metrics.bootstrap.samples=99 must be a whole number of at least 100"),
        ({"samples": 250.5}, "metrics.bootstrap.samples=250.5 must be"),
        ({"confidence": 1.0}, "metrics.bootstrap.confidence=1.0 must be in (0, 1)"),
        ({"confidence": 0}, "metrics.bootstrap.confidence=0 must be in (0, 1)"),
        ({"confidence": "high"}, "metrics.bootstrap.confidence='high' must be a number"),
        ({"seed": -1}, "metrics.bootstrap.seed=-1 must be a whole number >= 0"),
        ({"sample": 500}, "metrics.bootstrap has unknown keys ['sample']"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(MuraError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        BootstrapSettings.from_config(settings)


def test_bad_settings_are_refused_by_intervals_too():
    frame = simulated_studies(np.random.default_rng(0), {"hand": 5})
    with pytest.raises(MuraError, match="samples=10"):
        intervals(frame, samples=10, confidence=CONFIDENCE, seed=0)


def test_the_config_defaults_are_valid():
    from helpers.runs import REPO_ROOT
    from omegaconf import OmegaConf

    node = OmegaConf.load(REPO_ROOT / "conf/metrics/default.yaml").bootstrap
    assert BootstrapSettings.from_config(OmegaConf.to_container(node)) == BootstrapSettings(2000, 0.95, 0)


def test_the_official_scorers_kappa_interval_is_far_narrower():
    """The official MURA scorer uses pa(1-pa)/(n(1-pe)^2), a variance, as the standard error."""
    frame = simulated_studies(np.random.default_rng(7), {"shoulder": 140})
    n = len(frame)
    table = intervals(frame, samples=2000, confidence=CONFIDENCE, seed=0)
    labels, preds = frame["label"].to_numpy(), frame["pred"].to_numpy()
    observed = np.mean(labels == preds)
    expected = labels.mean() * preds.mean() + (1 - labels.mean()) * (1 - preds.mean())
    variance = observed * (1 - observed) / (n * (1 - expected) ** 2)
    ours = table.loc[OVERALL, "kappa_ci_high"] - table.loc[OVERALL, "kappa_ci_low"]
    assert 2 * 1.96 * variance < ours / 10  # about 20 times narrower here (n = 286)
    assert 0.5 < 2 * 1.96 * np.sqrt(variance) / ours < 2  # with the square root it is the same size as ours


def test_paired_differences_use_the_same_resamples_for_both_models():
    rng = np.random.default_rng(2)
    first = simulated_studies(rng, {"hand": 40, "wrist": 40})
    better = first.assign(prob=np.where(first["label"] == 1, 0.7, 0.3) * 0.5 + first["prob"] * 0.5)
    better = better.assign(pred=(better["prob"] > 0.5).astype(int))
    table = paired_intervals(first, better, samples=300, confidence=CONFIDENCE, seed=4)
    table = table.set_index(["body_part", "metric"])
    single_a = intervals(first, samples=300, confidence=CONFIDENCE, seed=4)
    for part in ("hand", "wrist", OVERALL):
        for metric in METRICS:
            row = table.loc[(part, metric)]
            assert row["a"] == pytest.approx(single_a.loc[part, metric])
            assert row["difference"] == pytest.approx(row["b"] - row["a"])
            assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert table.loc[(OVERALL, "auroc"), "ci_low"] > 0 and table.loc[(OVERALL, "auroc"), "p_bootstrap"] < 0.05
    itself = paired_intervals(first, first, samples=300, confidence=CONFIDENCE, seed=4)
    assert (itself["difference"] == 0).all() and (itself[["ci_low", "ci_high"]] == 0).all().all()
    assert (itself["p_bootstrap"] == 1.0).all()


def test_paired_tables_must_match_row_by_row():
    first = simulated_studies(np.random.default_rng(0), {"hand": 10})
    flipped = first.assign(label=1 - first["label"])
    with pytest.raises(MuraError, match="disagree on label"):
        paired_intervals(first, flipped, samples=100, confidence=CONFIDENCE, seed=0)


@pytest.mark.parametrize(
    ("differences", "p"),
    [(np.full(99, 0.1), 2 / 100), (np.r_[np.full(49, -1.0), np.full(50, 1.0)], 1.0), (np.full(99, np.nan), np.nan)],
)
def test_bootstrap_p_value(differences, p):
    assert bootstrap_p_value(differences) == pytest.approx(p, nan_ok=True)
