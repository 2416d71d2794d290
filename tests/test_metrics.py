"""Metrics against scikit-learn at both levels and per body part, study aggregation against pandas, threshold
tuning, and what a run writes: TensorBoard scalars and figures, metrics_by_bodypart.csv, DDP equality."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_run, run_module, tiny_run_overrides
from sklearn import metrics as sk
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.metrics import (
    METRIC_NAMES,
    ImagePredictions,
    PredictionTable,
    StageMetrics,
    metrics_by_body_part,
)
from mura_lightning.thresholds import tune_threshold
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
    return values


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
    assert list(frame.columns) == list(METRIC_NAMES)
    assert frame.loc["wrist", "kappa"] == values["test/study/kappa/wrist"]
    assert frame.loc["overall", "kappa"] == values["test/study/kappa"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny two-epoch run over shoulder and wrist, with threshold tuning; its results and run folder."""
    from mura_trees import standard_studies, write_tree

    tmp = tmp_path_factory.mktemp("metrics_run")
    root = write_tree(tmp, standard_studies())
    results = train(compose_run(root, tmp, "trainer.max_epochs=2", "metrics.tune_threshold=true"))
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
        "test/threshold",
    ):
        assert tag in scalars, tag
    for stage in ("val", "test"):
        for level in ("image", "study"):
            for figure in ("confusion_matrix", "roc", "pr"):
                assert f"{stage}/{level}/{figure}" in images
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    declared = plugins["_hparams_/experiment"]
    assert b"test/study/kappa" in declared and b"val/study/auroc" in declared


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


def test_ddp_metrics_equal_a_single_process_run(finished_run, tmp_path):
    root, run_dir, results = finished_run
    common = [o for o in tiny_run_overrides(root, tmp_path) if not o.startswith("paths.output_dir")]
    finished = run_module(
        "mura_lightning.train",
        *common,
        "train=false",
        f"ckpt_path={results['ckpt_path']}",
        "trainer=ddp_cpu",
        "metrics.tune_threshold=true",
        f"paths.output_dir={tmp_path}/ddp",
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    compared = [key for key in results if key.startswith(("val/", "test/")) and not key.endswith(("loss", "seconds"))]
    assert len(compared) > 100
    for key in compared:
        assert ddp[key] == pytest.approx(results[key], abs=1e-5, nan_ok=True), key
