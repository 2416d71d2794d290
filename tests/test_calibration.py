"""Temperature scaling and per-body-part thresholds end to end: a tiny calibrated run's checkpoint carries its
temperature and thresholds, and evaluate, predict, Torch Hub and the exported model apply them; old checkpoints
without them still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import REPO_ROOT, compose_run, read_predictions, run_evaluate, run_predict

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.export import export, sidecar_path
from mura_lightning.inference.checkpoints import load_classifier
from mura_lightning.inference.model import InferenceModel
from mura_lightning.train import train

TOLERANCE = 1e-5
CALIBRATED = ("metrics.tune_threshold=true", "metrics.threshold_per_body_part=true", "metrics.calibration=temperature")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """A tiny tree and a checkpoint trained on it with temperature scaling and per-body-part thresholds."""
    tmp = tmp_path_factory.mktemp("calibration")
    root = write_tree(tmp, standard_studies())
    return root, train(compose_run(root, tmp / "run", "test=false", *CALIBRATED))["ckpt_path"]


def with_thresholds(ckpt_path: str, path: Path, **per_part: float) -> str:
    """A copy of a checkpoint whose per-body-part thresholds are `per_part` (others: its global threshold)."""
    checkpoint = torch.load(ckpt_path, weights_only=True)
    state = checkpoint["state_dict"]
    for part, value in per_part.items():
        state["tuned_thresholds"][BODY_PARTS.index(part)] = value
    torch.save(checkpoint, path)
    return str(path)


def test_the_checkpoint_carries_its_temperature_and_evaluate_applies_it(trained, tmp_path):
    root, ckpt = trained
    classifier = load_classifier(ckpt)
    temperature = float(classifier.temperature)
    assert temperature != pytest.approx(1.0)
    run_evaluate(tmp_path / "eval", ckpt)
    evaluated = read_predictions(tmp_path / "eval", "image")
    model = InferenceModel.from_checkpoints(ckpt)
    batch = torch.stack([model.preprocess(path) for path in evaluated["path"]])
    with torch.no_grad():
        logits = classifier.net(batch).squeeze(1)
    expected = torch.sigmoid(logits / temperature).numpy()
    np.testing.assert_allclose(evaluated["prob"], expected, rtol=0, atol=TOLERANCE)
    assert np.abs(expected - torch.sigmoid(logits).numpy()).max() > 10 * TOLERANCE  # T changed the probabilities
    assert model.describe()["temperatures"] == [pytest.approx(temperature)]

    hub = torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local", checkpoint=ckpt)
    np.testing.assert_allclose(hub(batch).detach().numpy(), expected, rtol=0, atol=TOLERANCE)
    scripted = torch.jit.load(str(export(ckpt, "torchscript", output=tmp_path / "model")))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(batch).numpy(), expected, rtol=0, atol=TOLERANCE)
    sidecar = json.loads(sidecar_path(tmp_path / "model.torchscript.pt").read_text())
    assert sidecar["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "eval/reliability.png").stat().st_size > 0


def test_the_checkpoint_carries_per_part_thresholds_tuned_on_val(trained):
    classifier = load_classifier(trained[1])
    thresholds = classifier.tuned_thresholds
    assert thresholds.shape == (len(BODY_PARTS),)
    for part in ("elbow", "finger", "forearm", "hand", "humerus"):  # not in the run: the global threshold
        assert float(thresholds[BODY_PARTS.index(part)]) == pytest.approx(float(classifier.tuned_threshold))
    model = InferenceModel.from_classifiers([classifier])
    assert model.thresholds == {part: pytest.approx(float(t)) for part, t in zip(BODY_PARTS, thresholds, strict=True)}
    assert InferenceModel.from_classifiers([classifier], threshold=0.3).thresholds is None


def test_evaluate_predict_and_export_decide_each_part_at_its_threshold(trained, tmp_path):
    root, ckpt = trained
    ckpt = with_thresholds(ckpt, tmp_path / "parts.ckpt", shoulder=0.0, wrist=1.0)
    values = run_evaluate(tmp_path / "eval", ckpt)
    table = pd.read_csv(tmp_path / "eval/metrics_by_bodypart.csv", index_col="body_part")
    assert table.loc["shoulder", "threshold"] == 0.0 and table.loc["wrist", "threshold"] == 1.0
    studies = read_predictions(tmp_path / "eval", "study")
    assert (studies.loc[studies["body_part"] == "shoulder", "pred"] == 1).all()
    assert (studies.loc[studies["body_part"] == "wrist", "pred"] == 0).all()
    assert values["thresholds"]["wrist"] == 1.0

    predicted = run_predict(tmp_path / "pred", ckpt, root / "valid")
    for part, decision in (("shoulder", 1), ("wrist", 0)):
        assert (predicted.loc[predicted["body_part"] == part, "pred"] == decision).all()
    loose = tmp_path / "loose" / "study1"  # no XR_ folder: the body part is unknown, the global threshold decides
    loose.mkdir(parents=True)
    shutil.copy(next(p for p in sorted((root / "valid").rglob("*.png")) if "XR_WRIST" in p.parts), loose / "image1.png")
    unknown = run_predict(tmp_path / "pred_loose", ckpt, loose).iloc[0]
    global_threshold = float(load_classifier(ckpt).tuned_threshold)
    assert unknown["body_part"] == "" and unknown["pred"] == int(unknown["prob"] > global_threshold)

    sidecar = json.loads(sidecar_path(export(ckpt, "torchscript", output=tmp_path / "model")).read_text())
    assert sidecar["thresholds"]["shoulder"] == 0.0 and sidecar["thresholds"]["wrist"] == 1.0
    assert sidecar["threshold"] == pytest.approx(global_threshold)


def test_checkpoints_without_temperature_or_part_thresholds_still_load(trained, tmp_path):
    checkpoint = torch.load(trained[1], weights_only=True)
    del checkpoint["state_dict"]["temperature"], checkpoint["state_dict"]["tuned_thresholds"]
    for key in ("threshold_per_body_part", "calibration"):
        del checkpoint["hyper_parameters"]["metrics"][key]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = load_classifier(tmp_path / "old.ckpt")
    assert float(old.temperature) == 1.0
    assert torch.equal(old.tuned_thresholds, old.tuned_threshold.repeat(len(BODY_PARTS)))
    model = InferenceModel.from_checkpoints(str(tmp_path / "old.ckpt"))
    assert model.temperatures == [1.0] and model.thresholds is None
    lightning_state = torch.load(tmp_path / "old.ckpt", weights_only=True)
    old.on_load_checkpoint(lightning_state)
    old.load_state_dict(lightning_state["state_dict"])
