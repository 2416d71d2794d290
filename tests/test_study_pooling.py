"""A model with a study pooling, everywhere a model goes: trained on study batches of partial-view synthetic MURA, its
CAM grid captioned with attention weights, evaluate, predict, Torch Hub, TorchScript and ONNX agreeing on the study
probabilities, DDP equal to one process, and the inputs it cannot take refused with what to do."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import (
    REPO_ROOT,
    assert_same_metrics,
    build_datamodule,
    compose_run,
    ddp_results,
    read_predictions,
    run_evaluate,
    run_predict,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mura_lightning.callbacks.cam as cam_module
from mura_lightning.callbacks.layout import figure_tag
from mura_lightning.errors import MuraError
from mura_lightning.export import export
from mura_lightning.inference.model import InferenceModel
from mura_lightning.models.module import MURAClassifier
from mura_lightning.synthetic import generate_synthetic_mura
from mura_lightning.train import train

TOLERANCE = 1e-5
POOLED = ("model=resnet50", "pooling=attention", "model.pooling.hidden=16", "model.pooling.image_loss_weight=0.5")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic MURA whose fractures and lytic spots show on some of a study's views only."""
    parent = tmp_path_factory.mktemp("partial_views")
    return generate_synthetic_mura(parent, studies_per_part=6, seed=4, min_side=48, max_side=64, num_workers=1)


@pytest.fixture(scope="module")
def pooled_run(synthetic_root, tmp_path_factory):
    """An attention-pooled DenseNet-169 trained and tested on study batches, with the CAM tiles' captions."""
    out = tmp_path_factory.mktemp("pooled")
    captions = []
    tile = cam_module.captioned_tile
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            cam_module,
            "captioned_tile",
            lambda picture, boxes, caption: captions.append(caption) or tile(picture, boxes, caption),
        )
        cam = ["callbacks.cam.num_images=4", "callbacks.cam.localisation_images=4"]
        cfg = compose_run(synthetic_root, out, *POOLED, *cam, "data.max_views=3")
        results = train(cfg)
    return out / "run", results, captions


def test_a_pooled_run_scores_studies_and_views_and_shows_attention_in_its_cam_grid(pooled_run):
    run_dir, results, captions = pooled_run
    assert results["pooling"] == "attention"
    for key in ("test/study/kappa", "test/study/auroc", "test/image/auroc", "val/study/kappa", "test/cam/iou"):
        assert key in results
    studies, images = read_predictions(run_dir, "study"), read_predictions(run_dir, "image")
    assert len(studies) == images["study"].nunique() and len(images) > len(studies)
    weighted = [c for c in captions if " w=" in c]
    assert weighted and len(weighted) == len(captions)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {figure_tag("val", "cam"), figure_tag("test", "cam")} <= set(events.Tags()["images"])


def test_evaluate_predict_hub_and_exports_agree_on_study_probabilities(pooled_run, synthetic_root, tmp_path):
    run_dir, results, _ = pooled_run
    ckpt = results["ckpt_path"]
    run_evaluate(tmp_path / "eval", ckpt)
    evaluated = read_predictions(tmp_path / "eval", "study").set_index("study")["prob"]
    tested = read_predictions(run_dir, "study").set_index("study")["prob"]
    np.testing.assert_allclose(evaluated.loc[tested.index], tested, atol=1e-4)  # the run tested under float32 too

    table = run_predict(tmp_path / "pred", ckpt, synthetic_root / "valid" / "XR_WRIST", "cam=true")
    views = table[table["level"] == "image"]
    predicted = table[table["level"] == "study"].set_index("study")["prob"]
    np.testing.assert_allclose(
        predicted, evaluated.loc[[f"valid/{study}" for study in predicted.index]], atol=TOLERANCE
    )
    np.testing.assert_allclose(views.groupby("study")["weight"].sum(), 1.0, atol=1e-5)
    assert len(list((tmp_path / "pred" / "cams").iterdir())) == len(views)

    hub = torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local", checkpoint=ckpt)
    scripted = torch.jit.load(str(export(ckpt, "torchscript", output=tmp_path / "model")))
    sidecar = json.loads((tmp_path / "model.torchscript.pt.json").read_text())
    assert sidecar["input_name"] == "views" and sidecar["output_names"] == ["probability", "weights"]
    sessions = []
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        sessions.append(onnxruntime.InferenceSession(str(export(ckpt, "onnx", output=tmp_path / "model"))))
    for study, group in list(views.groupby("study", sort=False))[:4]:
        files = [synthetic_root / "valid" / path for path in group["path"]]
        probability, weights = hub.predict_study(files)
        assert probability == pytest.approx(float(predicted.loc[study]), abs=TOLERANCE)
        np.testing.assert_allclose(weights.numpy(), group["weight"], atol=TOLERANCE)
        batch = torch.stack([hub.preprocess(file) for file in files])
        with torch.no_grad():
            outputs = [tuple(o.numpy() for o in scripted(batch))]
        outputs += [tuple(session.run(None, {"views": batch.numpy()})) for session in sessions]
        for exported_probability, exported_weights in outputs:
            assert float(exported_probability[0]) == pytest.approx(probability, abs=TOLERANCE)
            np.testing.assert_allclose(exported_weights, weights.numpy(), atol=TOLERANCE)


def test_ddp_metrics_equal_a_single_process_run_for_a_study_pooling(pooled_run, synthetic_root, tmp_path):
    _, results, _ = pooled_run
    ddp = ddp_results(synthetic_root, tmp_path, results["ckpt_path"], *POOLED, "callbacks.cam=null")
    assert_same_metrics(ddp, {key: value for key, value in results.items() if "/cam/" not in key})


def test_a_pooled_model_learns_partial_view_studies(synthetic_root):
    """Two study batches of partial-view synthetic MURA (abnormal studies whose lesion shows on some views only),
    trained through the study pooling: the study loss falls to a fraction, every study ends on its side of 0.5."""
    datamodule = build_datamodule(synthetic_root, "bodypart=all", "data.batch_size=8", "data.val_fraction=0.2")
    datamodule.study_batches = True
    datamodule.setup()
    batches = [batch for batch, _ in zip(datamodule.train_dataloader(), range(2), strict=False)]
    torch.manual_seed(0)
    model = MURAClassifier(
        backbone={"name": "resnet50", "pretrained": False},
        preprocessing=datamodule.preprocessing.to_dict(),
        pooling={"name": "attention", "hidden": 16},
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        for batch in batches:
            loss = model.pool(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    with torch.no_grad():
        pooled = [model.pool(batch) for batch in batches]
    assert np.mean(losses[-2:]) < 0.3 * np.mean(losses[:2]), losses
    for result in pooled:
        assert ((torch.sigmoid(result.study_logits) > 0.5).float() == result.labels).all()


def test_a_checkpoint_of_another_pooling_is_refused(pooled_run, synthetic_root, tmp_path):
    _, results, _ = pooled_run
    cfg = compose_run(synthetic_root, tmp_path, "model=resnet50", "train=false", f"ckpt_path={results['ckpt_path']}")
    with pytest.raises(
        MuraError, match="trained with pooling=attention, this run is configured with pooling=mean_prob"
    ):
        train(cfg)
    with pytest.raises(MuraError, match="trained with pooling=attention, which is part of the model: pooling=max_prob"):
        run_evaluate(tmp_path / "eval", results["ckpt_path"], "pooling=max_prob")
    with pytest.raises(MuraError, match="pooling=max cannot be chosen at inference: a study pooling is trained into"):
        InferenceModel.from_checkpoints(results["ckpt_path"], pooling="max")
    assert InferenceModel.from_checkpoints(results["ckpt_path"], pooling="attention").poolings == ["attention"]


def test_predict_refuses_views_it_cannot_group_into_studies(pooled_run, synthetic_root, tmp_path):
    _, results, _ = pooled_run
    study = next(p.parent for p in sorted((synthetic_root / "valid").rglob("*.png")))
    mixed = tmp_path / "mixed"
    (mixed / "study1").mkdir(parents=True)
    for number, image in enumerate(sorted(study.glob("*.png"))):
        (mixed / ("study1" if number else "") / image.name).write_bytes(image.read_bytes())
    with pytest.raises(MuraError, match="holds radiographs of its own and in its subfolders, so its views cannot"):
        run_predict(tmp_path / "out", results["ckpt_path"], mixed)
    table = run_predict(tmp_path / "one", results["ckpt_path"], study)
    assert list(table["level"]) == ["image"] * len(list(study.glob("*.png"))) + ["study"]
