"""Metrics against scikit-learn at both levels and per body part, study aggregation against pandas, threshold
tuning (global and per body part), calibration (ECE, Brier, temperature scaling), and what a run writes:
TensorBoard scalars and figures, metrics_by_bodypart.csv, DDP equality."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.runs import assert_same_metrics, compose_run, ddp_results
from sklearn import metrics as sk
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar.metadata import CONFIG_SUMMARY_TAG as CUSTOM_SCALARS_TAG
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from mura_lightning.callbacks.layout import FIGURE_KINDS, figure_tag
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.calibration import (
    CALIBRATION_BINS,
    fit_temperature,
    reliability_bins,
    reliability_figure,
)
from mura_lightning.evaluation.metrics import (
    METRIC_NAMES,
    ImagePredictions,
    PredictionTable,
    StageMetrics,
    metrics_by_body_part,
)
from mura_lightning.evaluation.thresholds import MetricSettings, tune_threshold, tune_thresholds_per_part
from mura_lightning.train import train

TOLERANCE = 1e-6


def sklearn_scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The reference values, computed by scikit-learn; NaN where a metric is undefined."""
    decisions = (probs > threshold).astype(int)
    both = len(np.unique(labels)) == 2
    tn, fp, fn, tp = sk.confusion_matrix(labels, decisions, labels=[0, 1]).ravel()
    values = {
        "accuracy": sk.accuracy_score(labels, decisions),
        "auroc": sk.roc_auc_score(labels, probs) if both else math.nan,
        "average_precision": sk.average_precision_score(labels, probs) if labels.any() else 0.0,
        "kappa": sk.cohen_kappa_score(labels, decisions),
        "true_negatives": tn,
        "false_positives": fp,
        "false_negatives": fn,
        "true_positives": tp,
    }
    for name, cls in (("abnormal", 1), ("normal", 0)):
        values[f"precision_{name}"] = sk.precision_score(labels, decisions, pos_label=cls, zero_division=0)
        values[f"recall_{name}"] = sk.recall_score(labels, decisions, pos_label=cls, zero_division=0)
        values[f"f1_{name}"] = sk.f1_score(labels, decisions, pos_label=cls, zero_division=0)
    values["sensitivity"], values["specificity"] = values["recall_abnormal"], values["recall_normal"]
    values["brier"] = sk.brier_score_loss(labels, probs, pos_label=1) if len(labels) else math.nan
    values["ece"] = expected_calibration_error(probs, labels)
    return values


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE by hand: bins [k/n, (k+1)/n) (a probability of exactly 1 in a bin of its own, as torchmetrics does),
    the mean |observed frequency - mean probability| weighted by each bin's share of the predictions."""
    bins = np.floor(probs.astype(np.float64) * n_bins).astype(int)
    error = 0.0
    for b in np.unique(bins):
        inside = bins == b
        error += abs(labels[inside].mean() - probs[inside].mean()) * inside.mean()
    return error


def make_table(probs, labels, studies=None, parts=None) -> PredictionTable:
    n = len(probs)
    return PredictionTable(
        probs=torch.tensor(probs, dtype=torch.float32),
        labels=torch.tensor(labels, dtype=torch.float32),
        studies=torch.tensor(studies if studies is not None else range(n), dtype=torch.long),
        body_parts=torch.tensor(parts if parts is not None else [0] * n, dtype=torch.long),
        image_ids=torch.arange(n),
    )


def random_images(seed: int, n: int = 120) -> pd.DataFrame:
    """Images of studies (1-4 images each) over three body parts, labels per study, noisy probabilities."""
    rng = np.random.default_rng(seed)
    study_sizes = rng.integers(1, 5, size=n // 2)
    studies = np.repeat(np.arange(len(study_sizes)), study_sizes)[:n]
    study_labels = rng.integers(0, 2, size=len(study_sizes))
    study_parts = rng.choice([1, 5, 6], size=len(study_sizes))
    labels = study_labels[studies]
    probs = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.25, size=len(studies)), 0, 1).astype(np.float32)
    return pd.DataFrame({"prob": probs, "label": labels, "study": studies, "part": study_parts[studies]})


def table_of(frame: pd.DataFrame) -> PredictionTable:
    return make_table(frame["prob"].to_numpy(), frame["label"].to_numpy(), frame["study"], frame["part"])


def assert_matches(ours: dict[str, float], reference: dict[str, float], prefix: str = "", suffix: str = "") -> None:
    for name, expected in reference.items():
        actual = ours[f"{prefix}{name}{suffix}"]
        assert actual == pytest.approx(expected, abs=TOLERANCE, nan_ok=True), f"{prefix}{name}{suffix}"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_every_metric_at_both_levels_and_per_part_equals_sklearn(seed, threshold):
    images = random_images(seed)
    tables = {"image": table_of(images), "study": table_of(images).by_study("mean")}
    values = StageMetrics().score("test", tables, threshold)
    studies = images.groupby("study").agg(prob=("prob", "mean"), label=("label", "first"), part=("part", "first"))
    for level, frame in (("image", images), ("study", studies)):
        assert_matches(
            values,
            sklearn_scores(frame["prob"].to_numpy(), frame["label"].to_numpy(), threshold),
            prefix=f"test/{level}/",
        )
        for part, rows in frame.groupby("part"):
            reference = sklearn_scores(rows["prob"].to_numpy(), rows["label"].to_numpy(), threshold)
            assert_matches(values, reference, prefix=f"test/{level}/", suffix=f"/{BODY_PARTS[part]}")
    assert set(METRIC_NAMES) == set(sklearn_scores(images["prob"].to_numpy(), images["label"].to_numpy(), 0.5))


@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        ([0.1, 0.7, 0.4, 0.9], [0, 0, 0, 0]),  # one class only: normal
        ([0.1, 0.7, 0.4, 0.9], [1, 1, 1, 1]),  # one class only: abnormal
        ([0.2, 0.3, 0.1, 0.4], [0, 0, 0, 0]),  # one class, every decision right: kappa undefined
        ([0.5, 0.5, 0.5, 0.7, 0.2], [1, 0, 1, 1, 0]),  # ties at the threshold count as normal
        ([0.5, 0.5], [1, 0]),
    ],
    ids=["all-normal", "all-abnormal", "constant", "ties", "only-ties"],
)
def test_adversarial_cases_equal_sklearn(probs, labels):
    table = make_table(probs, labels)
    values = StageMetrics().score("val", {"image": table}, 0.5)
    assert_matches(
        values, sklearn_scores(np.array(probs, dtype=np.float32), np.array(labels), 0.5), prefix="val/image/"
    )


def test_studies_of_one_image_score_like_their_images():
    images = random_images(5)
    single = images.drop_duplicates("study").reset_index(drop=True)
    table = table_of(single)
    values = StageMetrics().score("test", {"image": table, "study": table.by_study("mean")}, 0.5)
    for name in METRIC_NAMES:
        assert values[f"test/image/{name}"] == pytest.approx(values[f"test/study/{name}"], nan_ok=True)


@pytest.mark.parametrize(("how", "pandas_how"), [("mean", "mean"), ("max", "max")])
def test_study_aggregation_equals_a_pandas_groupby(how, pandas_how):
    images = random_images(3)
    studies = table_of(images).by_study(how)
    expected = images.groupby("study").agg(prob=("prob", pandas_how), label=("label", "first"), part=("part", "first"))
    np.testing.assert_allclose(studies.probs.numpy(), expected["prob"].to_numpy(), atol=TOLERANCE)
    np.testing.assert_array_equal(studies.labels.numpy(), expected["label"].to_numpy())
    np.testing.assert_array_equal(studies.body_parts.numpy(), expected["part"].to_numpy())
    np.testing.assert_array_equal(studies.studies.numpy(), expected.index.to_numpy())


def test_bad_aggregation_and_mixed_study_labels_are_errors():
    with pytest.raises(MuraError, match="study_aggregation='median' is not one of mean, max"):
        make_table([0.1], [0]).by_study("median")
    with pytest.raises(MuraError, match="a study holds images with different labels"):
        make_table([0.1, 0.2], [0, 1], studies=[4, 4]).by_study("mean")


def test_predictions_keep_each_image_once_in_id_order():
    store = ImagePredictions()
    ids = torch.tensor([5, 2, 9])
    store.update(torch.tensor([0.5, 0.2, 0.9]), torch.tensor([1, 0, 1]), ids + 100, torch.zeros(3), ids)
    store.update(
        torch.tensor([0.5, 0.4]), torch.tensor([1, 1]), torch.tensor([105, 107]), torch.zeros(2), torch.tensor([5, 7])
    )  # image 5 again, as a distributed sampler's padding would send it
    table = store.compute()
    assert table.image_ids.tolist() == [2, 5, 7, 9]
    assert table.probs.tolist() == pytest.approx([0.2, 0.5, 0.4, 0.9])
    assert table.studies.tolist() == [102, 105, 107, 109]
    assert table.probs.dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 4])
def test_youden_threshold_maximises_j_as_sklearn_sees_it(seed):
    frame = random_images(seed)
    probs, labels = frame["prob"].to_numpy(), frame["label"].to_numpy()
    threshold = tune_threshold(table_of(frame), "youden")
    fpr, tpr, _ = sk.roc_curve(labels, probs)
    decisions = probs > threshold
    ours = sk.recall_score(labels, decisions) + sk.recall_score(labels, decisions, pos_label=0) - 1
    assert ours == pytest.approx(np.max(tpr - fpr), abs=TOLERANCE)


@pytest.mark.parametrize("seed", [0, 4])
def test_f1_threshold_maximises_abnormal_f1_as_sklearn_sees_it(seed):
    frame = random_images(seed)
    probs, labels = frame["prob"].to_numpy(), frame["label"].to_numpy()
    threshold = tune_threshold(table_of(frame), "f1")
    precision, recall, _ = sk.precision_recall_curve(labels, probs)
    best = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    assert sk.f1_score(labels, probs > threshold) == pytest.approx(best, abs=TOLERANCE)


def test_tuning_needs_both_classes_and_a_known_method():
    with pytest.raises(MuraError, match="one class only"):
        tune_threshold(make_table([0.2, 0.8], [1, 1]), "youden")
    with pytest.raises(MuraError, match="threshold_method='best' is not one of youden, f1"):
        tune_threshold(make_table([0.2, 0.8], [0, 1]), "best")


def test_table_by_body_part_has_parts_then_overall():
    images = random_images(2)
    values = StageMetrics().score("test", {"study": table_of(images).by_study("mean")}, 0.5)
    frame = metrics_by_body_part(values, "test", "study")
    assert list(frame.index) == ["finger", "shoulder", "wrist", "overall"]
    assert list(frame.columns) == [*METRIC_NAMES, "threshold"]
    assert frame.loc["wrist", "kappa"] == values["test/study/kappa/wrist"]
    assert frame.loc["overall", "kappa"] == values["test/study/kappa"]


CALIBRATED = ("metrics.tune_threshold=true", "metrics.threshold_per_body_part=true", "metrics.calibration=temperature")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny two-epoch run over shoulder and wrist, with per-body-part threshold tuning and temperature scaling;
    its results and run folder."""
    from helpers.mura_trees import standard_studies, write_tree

    tmp = tmp_path_factory.mktemp("metrics_run")
    root = write_tree(tmp, standard_studies())
    results = train(compose_run(root, tmp, "trainer.max_epochs=2", *CALIBRATED))
    return root, tmp / "run", results


def test_tensorboard_holds_the_scalars_figures_and_hparams(finished_run):
    _, run_dir, _ = finished_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    for tag in (
        "train/loss_epoch",
        "val/loss",
        "test/loss",
        "val/study/kappa",
        "val/image/auroc",
        "test/study/recall_abnormal/shoulder",
        "test/image/f1_normal/wrist",
        "test/study/specificity",
        "val/tuned_threshold",
        "val/tuned_threshold/wrist",
        "val/temperature",
        "test/threshold",
        "test/study/ece",
        "test/image/brier/shoulder",
    ):
        assert tag in scalars, tag
    for stage in ("val", "test"):
        for level in ("image", "study"):
            for figure in ("confusion_matrix", "roc", "pr", "reliability"):
                assert figure_tag(stage, figure, level) in images
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    declared = plugins["_hparams_/experiment"]
    assert b"test/study/kappa" in declared and b"val/study/auroc" in declared


def test_the_custom_scalars_layout_charts_the_logged_scalars_and_figures_sort_by_stage_then_kind(finished_run):
    _, run_dir, _ = finished_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    (config,) = events.Tensors(CUSTOM_SCALARS_TAG)
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}

    def charted(title):
        return sorted(tag for tag in scalars if any(re.search(pattern, tag) for pattern in charts[title]))

    assert charted("kappa by body part") == ["val/study/kappa/shoulder", "val/study/kappa/wrist"]
    assert charted("auroc") == ["test/image/auroc", "test/study/auroc", "val/image/auroc", "val/study/auroc"]
    assert charted("loss (train and val)") == ["train/loss_epoch", "val/loss"]
    assert charted("learning rate") == ["lr-Adam"]
    assert "val/temperature" in charted("threshold and temperature")
    for stage in ("val", "test"):
        tags = sorted(tag for tag in events.Tags()["images"] if tag.startswith(f"{stage}/"))
        kinds = [tag.split("/")[1].split("_", 1)[1] for tag in tags]
        assert kinds == sorted(kinds, key=FIGURE_KINDS.index) and set(kinds) == set(FIGURE_KINDS), tags


def test_metrics_csv_matches_the_results_and_the_tuned_threshold_is_applied(finished_run):
    _, run_dir, results = finished_run
    table = pd.read_csv(run_dir / "metrics_by_bodypart.csv", index_col="body_part")
    assert list(table.index) == ["shoulder", "wrist", "overall"]
    for part, suffix in (("shoulder", "/shoulder"), ("wrist", "/wrist"), ("overall", "")):
        for name in METRIC_NAMES:
            assert table.loc[part, name] == pytest.approx(results[f"test/study/{name}{suffix}"], nan_ok=True)
    assert (run_dir / "metrics_by_bodypart_image.csv").is_file()
    assert results["test/threshold"] == results["val/tuned_threshold"]
    assert results["val/threshold"] == 0.5
    for part in ("shoulder", "wrist"):
        assert table.loc[part, "threshold"] == pytest.approx(results[f"val/tuned_threshold/{part}"])
    assert results["test/temperature"] == results["val/temperature"] != 1.0


def test_ddp_metrics_equal_a_single_process_run(finished_run, tmp_path):
    root, run_dir, results = finished_run
    assert_same_metrics(ddp_results(root, tmp_path, results["ckpt_path"], *CALIBRATED), results)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_torchmetrics_and_a_by_hand_binning(seed):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0, 1, 500).astype(np.float32)
    labels = (rng.uniform(0, 1, 500) < probs**2).astype(int)
    values = StageMetrics().score("test", {"image": make_table(probs, labels)}, 0.5)
    reference = binary_calibration_error(torch.tensor(probs), torch.tensor(labels), n_bins=15, norm="l1")
    assert values["test/image/ece"] == pytest.approx(float(reference), abs=TOLERANCE)
    assert values["test/image/ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=TOLERANCE)
    assert values["test/image/brier"] == pytest.approx(sk.brier_score_loss(labels, probs), abs=TOLERANCE)
    assert values["test/image/ece"] > 0.05  # the labels follow p^2, not p: visibly miscalibrated


def over_confident(seed: int, n: int = 4000, scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn with probability sigmoid(z), and logits `scale` times z: over-confident by `scale`."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=generator) * 1.5
    labels = (torch.rand(n, generator=generator) < torch.sigmoid(z)).float()
    return z * scale, labels


def test_temperature_scaling_lowers_ece_and_keeps_auroc():
    logits, labels = over_confident(0)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    raw, scaled = torch.sigmoid(logits), torch.sigmoid(logits / temperature)
    ece_raw = binary_calibration_error(raw, labels.long(), n_bins=15)
    ece_scaled = binary_calibration_error(scaled, labels.long(), n_bins=15)
    assert ece_scaled < ece_raw / 3
    assert float(binary_auroc(scaled, labels.long())) == pytest.approx(float(binary_auroc(raw, labels.long())))


def test_temperature_of_one_class_is_one_with_a_warning(caplog):
    assert fit_temperature(torch.tensor([1.0, 2.0, -3.0]), torch.ones(3)) == 1.0
    assert "both classes" in caplog.text


def test_uninformative_logits_send_the_temperature_to_its_bound_with_a_warning(caplog):
    logits, labels = over_confident(2, n=500)
    assert fit_temperature(-logits, labels) == pytest.approx(math.exp(5.0))
    assert "ran off" in caplog.text


def test_temperature_is_fitted_under_inference_mode():
    logits, labels = over_confident(1, n=500)
    with torch.inference_mode():
        inside = fit_temperature(logits * 1, labels * 1)
    assert inside == pytest.approx(fit_temperature(logits, labels))


def test_reliability_bins_count_every_prediction_and_the_figure_has_the_diagonal():
    probs = torch.tensor([0.0, 0.1, 0.5, 0.51, 0.99, 1.0])
    labels = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    counts, confidence, frequency = reliability_bins(probs, labels)
    assert counts.sum() == len(probs) and counts[-1] == 2 and counts[0] == 1
    assert frequency[7] == pytest.approx(0.5) and confidence[7] == pytest.approx(0.505)
    assert torch.isnan(frequency[3])
    figure = reliability_figure(probs, labels, "test study")
    lines = figure.axes[0].get_lines()
    assert list(lines[0].get_xdata()) == [0, 1] and list(lines[0].get_ydata()) == [0, 1]
    assert len(lines[1].get_xdata()) == int((counts > 0).sum())


def test_per_part_thresholds_decide_each_part_at_its_own_and_fill_the_threshold_column():
    images = random_images(3)
    table = table_of(images)
    per_part = torch.full((len(BODY_PARTS),), 0.5)
    per_part[BODY_PARTS.index("finger")], per_part[BODY_PARTS.index("wrist")] = 0.3, 0.7
    values = StageMetrics().score("test", {"image": table}, per_part)
    rows = per_part[torch.tensor(images["part"].to_numpy())].numpy()
    decisions = (images["prob"].to_numpy() > rows).astype(int)
    assert values["test/image/kappa"] == pytest.approx(sk.cohen_kappa_score(images["label"], decisions))
    for part, subset in images.groupby("part"):
        name = BODY_PARTS[part]
        reference = sklearn_scores(subset["prob"].to_numpy(), subset["label"].to_numpy(), float(per_part[part]))
        assert_matches(values, reference, prefix="test/image/", suffix=f"/{name}")
    frame = metrics_by_body_part(values, "test", "image")
    assert frame.loc["wrist", "threshold"] == pytest.approx(0.7)
    assert frame.loc["finger", "threshold"] == pytest.approx(0.3)
    assert math.isnan(frame.loc["overall", "threshold"])
    scalar = metrics_by_body_part(StageMetrics().score("test", {"image": table}, 0.4), "test", "image")
    assert (scalar["threshold"] == 0.4).all()


def test_per_part_tuning_falls_back_to_the_global_threshold_naming_the_part(caplog):
    images = random_images(4)
    images.loc[images["part"] == 6, "label"] = 1  # wrist: abnormal studies only
    table = table_of(images)
    thresholds = tune_thresholds_per_part(table, "youden", fallback=0.42)
    assert float(thresholds[BODY_PARTS.index("wrist")]) == pytest.approx(0.42)
    assert "wrist" in caplog.text and "one class" in caplog.text
    assert "finger" not in caplog.text and "elbow" not in caplog.text
    for index in (1, 5):  # finger and shoulder: tuned on their own rows
        own = tune_threshold(table.select(table.body_parts == index), "youden")
        assert float(thresholds[index]) == pytest.approx(own)
    assert float(thresholds[BODY_PARTS.index("elbow")]) == pytest.approx(0.42)  # no rows at all


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold_per_body_part": True}, "needs metrics.tune_threshold=true"),
        ({"calibration": "platt"}, "metrics.calibration='platt' is not one of none, temperature"),
    ],
)
def test_bad_calibration_and_threshold_settings_are_refused(settings, message):
    with pytest.raises(MuraError, match=message):
        MetricSettings(**settings)
