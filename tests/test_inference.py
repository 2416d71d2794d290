"""The one inference path: evaluate, predict, Torch Hub and the exported models give the same probabilities for the
same images, with and without test-time augmentation; and the defects found in the old paths stay fixed."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import REPO_ROOT, compose_run, read_predictions, run_evaluate, run_module, run_predict
from PIL import Image

from mura_lightning.data.presets import Preprocessing
from mura_lightning.errors import MuraError
from mura_lightning.export import export
from mura_lightning.inference.aggregate import aggregate_studies
from mura_lightning.inference.checkpoints import load_classifier
from mura_lightning.inference.model import InferenceModel
from mura_lightning.inference.tta import TestTimeAugmentation
from mura_lightning.models.segments import OneStudy
from mura_lightning.train import train

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """A tiny tree and a DenseNet-169 checkpoint trained on it."""
    tmp = tmp_path_factory.mktemp("inference")
    root = write_tree(tmp, standard_studies())
    return root, train(compose_run(root, tmp / "run", "test=false"))["ckpt_path"]


@pytest.mark.parametrize("tta", ["none", "hflip_rotate"])
def test_evaluate_predict_hub_and_export_give_the_same_probabilities(trained, tmp_path, tta):
    root, ckpt = trained
    run_evaluate(tmp_path / "eval", ckpt, f"tta={tta}")
    evaluated = read_predictions(tmp_path / "eval", "image").set_index("path")["prob"]
    paths = list(evaluated.index)

    table = run_predict(tmp_path / "pred", ckpt, root / "valid", f"tta={tta}")
    images = table[table["level"] == "image"]
    predicted = pd.Series(images["prob"].to_numpy(), index=[str(root / name) for name in images["path"]])
    np.testing.assert_allclose(predicted.loc[paths], evaluated, rtol=0, atol=TOLERANCE)

    hub = torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local", checkpoint=ckpt, tta=tta)
    np.testing.assert_allclose(hub.predict(paths).numpy(), evaluated, rtol=0, atol=TOLERANCE)

    batch = torch.stack([hub.preprocess(path) for path in paths])
    scripted = torch.jit.load(str(export(ckpt, "torchscript", output=tmp_path / "model", tta=tta)))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(batch).numpy(), evaluated, rtol=0, atol=TOLERANCE)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        onnx_path = export(ckpt, "onnx", output=tmp_path / "model", tta=tta, opset=20)
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (probs,) = session.run(None, {"images": batch.numpy()})
        np.testing.assert_allclose(probs, evaluated, rtol=0, atol=TOLERANCE)


def test_tta_averages_the_probabilities_of_the_views(trained):
    model = InferenceModel.from_checkpoints(trained[1])
    flipped = InferenceModel.from_checkpoints(trained[1], tta="hflip")
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (model(batch) + model(torch.flip(batch, dims=[-1]))) / 2
        torch.testing.assert_close(flipped(batch), expected, rtol=0, atol=1e-6)
    assert flipped.describe()["tta"] == "hflip"


def test_tta_rotations_fill_with_normalised_black():
    preprocessing = Preprocessing(image_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    tta = TestTimeAugmentation("hflip_rotate", 30.0, preprocessing)
    black = torch.tensor([-m / s for m, s in zip(preprocessing.mean, preprocessing.std, strict=True)])
    image = black.view(1, 3, 1, 1).expand(2, 3, 16, 16).clone()
    views = tta(image)
    assert views.shape == (6, 2, 3, 16, 16)
    torch.testing.assert_close(views, image.expand(6, -1, -1, -1, -1), rtol=0, atol=1e-5)


def test_bad_tta_settings_are_clear_errors(trained):
    with pytest.raises(MuraError, match="tta='mirror' is not one of none, hflip, hflip_rotate"):
        InferenceModel.from_checkpoints(trained[1], tta="mirror")
    with pytest.raises(MuraError, match="tta_degrees=0.0 must lie in"):
        InferenceModel.from_checkpoints(trained[1], tta="hflip_rotate", tta_degrees=0.0)


def test_study_aggregation_carries_unreadable_images():
    probs = torch.tensor([0.2, float("nan"), 0.6, float("nan"), 0.9])
    studies = torch.tensor([0, 0, 0, 1, 2])
    ids, mean = aggregate_studies(probs, studies, "mean")
    assert ids.tolist() == [0, 1, 2]
    torch.testing.assert_close(mean[[0, 2]], torch.tensor([0.4, 0.9]))
    assert torch.isnan(mean[1])
    _, largest = aggregate_studies(probs, studies, "max")
    torch.testing.assert_close(largest[[0, 2]], torch.tensor([0.6, 0.9]))
    assert torch.isnan(largest[1])
    with pytest.raises(MuraError, match="study_aggregation='median' is not one of mean, max"):
        aggregate_studies(probs, studies, "median")


def test_rgb_arrays_are_read_as_gray_and_other_arrays_are_refused(trained):
    model = InferenceModel.from_checkpoints(trained[1])
    gray = np.random.default_rng(0).integers(0, 256, size=(40, 30), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    torch.testing.assert_close(model.preprocess(rgb), model.preprocess(gray))
    torch.testing.assert_close(model.preprocess(np.dstack([rgb, np.full_like(gray, 255)])), model.preprocess(gray))
    with pytest.raises(MuraError, match=r"must be \(H, W\) gray or \(H, W, 3\|4\) RGB\(A\), got shape \(3, 40, 30\)"):
        model.preprocess(np.moveaxis(rgb, 2, 0))
    with pytest.raises(MuraError, match="must be uint8 .* got float64"):
        model.preprocess(gray / 255.0)


def valid_only_copy(root: Path, parent: Path) -> Path:
    """A copy of a MURA tree without its train split and train CSVs."""
    copy = Path(shutil.copytree(root, parent / root.name, ignore=shutil.ignore_patterns("train", "train_*.csv")))
    assert not (copy / "train").exists() and (copy / "valid").is_dir()
    return copy


def test_evaluate_reads_only_the_valid_split(trained, tmp_path):
    root, ckpt = trained
    full = run_evaluate(tmp_path / "full", ckpt)
    alone = run_evaluate(tmp_path / "alone", ckpt, f"data.root={valid_only_copy(root, tmp_path / 'valid_only')}")
    assert alone["test/study/kappa"] == pytest.approx(full["test/study/kappa"], nan_ok=True)
    assert alone["test/image/auroc"] == pytest.approx(full["test/image/auroc"])


def tree_with_a_broken_image(parent: Path) -> tuple[Path, str]:
    root = write_tree(parent, standard_studies())
    broken = sorted((root / "valid").rglob("*.png"))[0]
    broken.write_bytes(b"not a png")
    return root, str(broken)


def test_evaluate_skips_unreadable_images_even_when_a_whole_batch_is_unreadable(trained, tmp_path):
    root, broken = tree_with_a_broken_image(tmp_path / "tree")
    values = run_evaluate(tmp_path / "eval", trained[1], f"data.root={root}", "data.on_error=skip", "data.batch_size=1")
    assert values["unreadable_images"] == 1
    images = read_predictions(tmp_path / "eval", "image")
    assert broken not in set(images["path"]) and len(images) == len(list((root / "valid").rglob("*.png"))) - 1
    with pytest.raises(
        MuraError, match=f"(?s)1 images could not be read:\n  cannot decode image {broken}.*on_error=skip"
    ):
        run_evaluate(tmp_path / "raise", trained[1], f"data.root={root}")


def test_predict_step_passes_over_an_all_unreadable_batch(trained):
    assert load_classifier(trained[1]).predict_step(None, 0) is None


def test_predict_errors_give_advice_predict_can_follow(trained, tmp_path):
    root, broken = tree_with_a_broken_image(tmp_path / "tree")
    with pytest.raises(MuraError, match=f"no input could be read: cannot decode image {broken}") as raised:
        run_predict(tmp_path / "pred", trained[1], Path(broken))
    assert "Replace or remove the file" in str(raised.value) and "on_error" not in str(raised.value)


def test_checkpoints_from_before_preprocessing_owned_in_chans_still_load(trained, tmp_path):
    checkpoint = torch.load(trained[1], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    in_chans = hparams["preprocessing"].pop("in_chans")
    hparams["backbone"]["in_chans"] = in_chans
    hparams["cam_layer"] = "features.norm5"
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old, new = load_classifier(tmp_path / "old.ckpt"), load_classifier(trained[1])
    assert old.preprocessing == new.preprocessing
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(old(images), new(images))


@pytest.mark.parametrize(("aggregation", "pooling"), [("mean", "mean_prob"), ("max", "max_prob")])
def test_checkpoints_from_before_the_pooling_group_load_with_their_image_pooling(
    trained, tmp_path, aggregation, pooling
):
    checkpoint = torch.load(trained[1], weights_only=True)
    del checkpoint["hyper_parameters"]["pooling"]
    checkpoint["hyper_parameters"]["study_aggregation"] = aggregation
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = InferenceModel.from_checkpoints(str(tmp_path / "old.ckpt"))
    assert model.poolings == [pooling]
    load_classifier(trained[1]).on_load_checkpoint(checkpoint)  # a run resuming it with pooling=mean_prob
    views = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs, scores = model(views), model.score(views, OneStudy())
    expected = probs.mean() if aggregation == "mean" else probs.max()
    assert float(scores.study_probs[0]) == pytest.approx(float(expected), abs=1e-6)


def test_an_ensemble_of_models_with_different_image_sizes_is_refused(trained, tmp_path):
    checkpoint = torch.load(trained[1], weights_only=True)
    checkpoint["hyper_parameters"]["preprocessing"]["image_size"] = 48
    torch.save(checkpoint, tmp_path / "bigger.ckpt")
    with pytest.raises(MuraError, match="the models of an ensemble must take the same image size: .*bigger.ckpt"):
        InferenceModel.from_checkpoints([trained[1], str(tmp_path / "bigger.ckpt")])


def test_ensemble_members_get_their_own_channels_and_normalisation(trained, tmp_path):
    """A member trained on one channel with other statistics sees exactly the input it was trained on."""
    checkpoint = torch.load(trained[1], weights_only=True)
    preprocessing = checkpoint["hyper_parameters"]["preprocessing"]
    preprocessing.update(in_chans=1, mean=[0.5], std=[0.25])
    weight = checkpoint["state_dict"]["net.features.conv0.weight"]
    checkpoint["state_dict"]["net.features.conv0.weight"] = weight.sum(dim=1, keepdim=True)
    torch.save(checkpoint, tmp_path / "gray.ckpt")
    gray_member = InferenceModel.from_checkpoints(str(tmp_path / "gray.ckpt"))
    both = InferenceModel.from_checkpoints([trained[1], str(tmp_path / "gray.ckpt")])
    alone = InferenceModel.from_checkpoints(trained[1])
    images = [np.random.default_rng(seed).integers(0, 256, (40, 30), dtype=np.uint8) for seed in range(3)]
    expected = (alone.predict(images) + gray_member.predict(images)) / 2
    torch.testing.assert_close(both.predict(images), expected, rtol=0, atol=1e-6)


def test_predict_reads_labels_of_mixed_case_folders(trained, tmp_path):
    root = trained[0]
    study = tmp_path / "XR_Hand" / "patient9" / "study1_positive"
    study.mkdir(parents=True)
    shutil.copy(sorted((root / "valid").rglob("*.png"))[0], study / "image1.png")
    table = run_predict(tmp_path / "pred", trained[1], tmp_path / "XR_Hand")
    row = table[table["level"] == "image"].iloc[0]
    assert (row["body_part"], row["label"]) == ("hand", 1)


def test_evaluate_cli_works_in_multirun_mode(trained, tmp_path):
    finished = run_module(
        "mura_lightning.evaluate",
        "-m",
        f"ckpt_path={trained[1]}",
        "data.num_workers=0",
        "tta=none,hflip",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/results.json"))) == 2


def test_summarize_lists_evaluations_with_their_backbone(trained, tmp_path):
    from mura_lightning.runs import read_job

    run_evaluate(tmp_path / "evals" / "densenet", trained[1])
    job = read_job(tmp_path / "evals" / "densenet")
    assert (job.backbone, job.body_part, job.status) == ("densenet169", "shoulder+wrist", "ok")


def test_predict_takes_dicom_studies_refusing_bad_files_one_by_one(trained, tmp_path):
    from test_dicom import write_dicom

    study = tmp_path / "XR_WRIST" / "patient7" / "study1_positive"
    study.mkdir(parents=True)
    pixels = np.asarray(Image.open(sorted((trained[0] / "valid").rglob("*.png"))[0]))
    write_dicom(study / "image1.dcm", pixels)
    write_dicom(study / "noextension", pixels, photometric="MONOCHROME1")
    write_dicom(study / "frames.dcm", np.stack([pixels, pixels]), NumberOfFrames=2)
    Image.fromarray(pixels).save(study / "image2.png")
    table = run_predict(tmp_path / "pred", trained[1], tmp_path / "XR_WRIST").set_index("path")
    images = table[table["level"] == "image"]
    base = "XR_WRIST/patient7/study1_positive"
    assert images.loc[f"{base}/image1.dcm", "prob"] == pytest.approx(images.loc[f"{base}/image2.png", "prob"], abs=1e-6)
    assert len(images.loc[f"{base}/image1.dcm", "sop_instance_uid"]) > 10
    assert images.loc[f"{base}/image2.png", "sop_instance_uid"] == ""
    assert images.loc[f"{base}/noextension", "prob"] != pytest.approx(images.loc[f"{base}/image1.dcm", "prob"])
    assert "frames" in images.loc[f"{base}/frames.dcm", "error"] and np.isnan(images.loc[f"{base}/frames.dcm", "prob"])
    assert table.loc[base, "prob"] == pytest.approx(images["prob"].dropna().mean())
