"""Exporting checkpoints: ONNX Runtime and TorchScript outputs equal PyTorch's on any batch size, the sidecar
says how to feed the model, and bad settings or checkpoints are clear errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import compose, compose_run, run_module

from mura_lightning.errors import MuraError
from mura_lightning.export import export, main, sidecar_path
from mura_lightning.inference.checkpoints import CheckpointError, load_classifier
from mura_lightning.inference.model import InferenceModel
from mura_lightning.train import train

TOLERANCE = 1e-4
EXPORT_BATCH = 2
BACKBONES = {  # backbone -> extra overrides: ResNet-50 on one channel, max aggregation and a tuned threshold
    "densenet169": [],
    "resnet50": [
        "model=resnet50",
        "model.preprocessing.in_chans=1",
        "pooling=max_prob",
        "metrics.tune_threshold=true",
    ],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained checkpoint per backbone."""
    tmp = tmp_path_factory.mktemp("export")
    root = write_tree(tmp, standard_studies())
    return {
        name: Path(train(compose_run(root, tmp / name, "test=false", *overrides))["ckpt_path"])
        for name, overrides in BACKBONES.items()
    }


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, InferenceModel]:
    """Each checkpoint's PyTorch model, the reference."""
    return {name: InferenceModel.from_checkpoints(str(path)) for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def exported(checkpoints) -> dict[tuple[str, str], Path]:
    """(backbone, format) -> the model exported next to its checkpoint (ONNX only where the onnx package is)."""
    formats = ["torchscript", *(["onnx"] if importlib.util.find_spec("onnx") else [])]
    return {
        (name, fmt): export(path, fmt, batch_size=EXPORT_BATCH) for name, path in checkpoints.items() for fmt in formats
    }


def normalised_batch(model: InferenceModel, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(size)
    side = model.preprocessing.image_size
    return torch.randn(size, model.preprocessing.in_chans, side, side, generator=generator)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_onnx_runtime_gives_pytorchs_probabilities_on_any_batch_size(exported, models, backbone):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional extra: pip install '.[onnx]'")
    path = exported[(backbone, "onnx")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sidecar = json.loads(sidecar_path(path).read_text())
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, [returned.name]) == (sidecar["input_name"], sidecar["output_names"])
    assert given.shape == sidecar["input_shape"] and returned.shape == sidecar["output_shapes"][returned.name]
    for size in (EXPORT_BATCH, EXPORT_BATCH + 1):
        batch = normalised_batch(models[backbone], size)
        (probabilities,) = session.run(None, {given.name: batch.numpy()})
        with torch.no_grad():
            expected = models[backbone](batch).numpy()
        assert probabilities.shape == (size,)
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_torchscript_gives_pytorchs_probabilities_on_any_batch_size(exported, models, backbone):
    scripted = torch.jit.load(str(exported[(backbone, "torchscript")]))
    for size in (EXPORT_BATCH, EXPORT_BATCH + 1):
        batch = normalised_batch(models[backbone], size)
        with torch.no_grad():
            probabilities, expected = scripted(batch), models[backbone](batch)
        assert probabilities.shape == (size,)
        torch.testing.assert_close(probabilities, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sidecar_says_how_to_feed_the_model(exported, checkpoints, models, backbone):
    path = exported[(backbone, "torchscript")]
    sidecar = json.loads(sidecar_path(path).read_text())
    classifier = load_classifier(checkpoints[backbone])
    size, in_chans = sidecar["image_size"], sidecar["in_chans"]
    assert (sidecar["backbone"], sidecar["file"], sidecar["format"]) == (backbone, path.name, "torchscript")
    assert sidecar["checkpoint"] == str(checkpoints[backbone].resolve())
    assert in_chans == (1 if backbone == "resnet50" else 3)
    assert sidecar["input_shape"] == ["batch", in_chans, size, size]
    assert sidecar["output_shapes"] == {"probabilities": ["batch"]}
    assert sidecar["threshold"] == pytest.approx(classifier.decision_threshold("test"))
    assert sidecar["temperature"] == 1.0 and sidecar["thresholds"] is None  # trained uncalibrated, one threshold
    assert sidecar["tta"] == "none"
    assert sidecar["pooling"] == classifier.hparams["pooling"]["name"]
    aggregation = {"mean_prob": "mean", "max_prob": "max"}[sidecar["pooling"]]
    assert f"the {aggregation} of its images' probabilities" in sidecar["study"]
    assert "opset" not in sidecar
    gray = np.random.default_rng(0).integers(0, 256, size=(size, size), dtype=np.uint8)
    by_hand = (gray / 255.0)[None] - np.array(sidecar["mean"])[:, None, None]
    by_hand = np.broadcast_to(by_hand / np.array(sidecar["std"])[:, None, None], (in_chans, size, size))
    np.testing.assert_allclose(by_hand, models[backbone].preprocess(gray).numpy(), atol=1e-5)


def test_default_output_sits_next_to_the_checkpoint(exported, checkpoints):
    ckpt = checkpoints["densenet169"]
    assert exported[("densenet169", "torchscript")] == ckpt.with_suffix(".torchscript.pt")
    names = {path.name for path in ckpt.parent.iterdir()}
    assert names - {ckpt.name, "last.ckpt"} == {f"{ckpt.stem}.torchscript.pt", f"{ckpt.stem}.torchscript.pt.json"} | (
        {f"{ckpt.stem}.onnx", f"{ckpt.stem}.onnx.json"} if ("densenet169", "onnx") in exported else set()
    ), "no temporary files are left behind"
    if ("densenet169", "onnx") in exported:
        assert json.loads(sidecar_path(ckpt.with_suffix(".onnx")).read_text())["opset"] == 17


run_export = partial(run_module, "mura_lightning.export")


def test_main_exports_with_the_configs_defaults(checkpoints, tmp_path, caplog):
    cfg = compose("export", [f"ckpt_path={checkpoints['densenet169']}", f"output={tmp_path}/model.torchscript.pt"])
    assert (cfg.format, cfg.opset, cfg.batch_size, cfg.tta) == ("onnx", 17, 2, "none")
    cfg.format = "torchscript"
    with caplog.at_level(logging.INFO, logger="mura_lightning.export"):
        main(cfg)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.torchscript.pt", "model.torchscript.pt.json"]
    assert f"wrote {tmp_path}/model.torchscript.pt and {tmp_path}/model.torchscript.pt.json" in caplog.text


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")])
def test_an_output_without_the_formats_suffix_gets_it(checkpoints, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    path = export(checkpoints["densenet169"], fmt, output=tmp_path / "model")
    assert path == tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.json"]


def test_unknown_format_is_a_one_line_error_with_exit_code_2(checkpoints, tmp_path):
    result = run_export(f"ckpt_path={checkpoints['densenet169']}", "format=tflite", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: format='tflite' is not one of: onnx, torchscript" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir()), "Hydra writes no run folder, .hydra/ or log"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=f"ckpt_path={tmp_path}/missing.ckpt does not exist"):
        export(tmp_path / "missing.ckpt", "torchscript")


def test_damaged_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    damaged = tmp_path / "cut.ckpt"
    damaged.write_bytes(checkpoints["densenet169"].read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {damaged}: it is damaged"):
        export(damaged, "torchscript")
    assert not list(tmp_path.glob("cut.torchscript*"))


def test_a_foreign_checkpoint_is_a_clear_error(tmp_path):
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a mura-lightning checkpoint"):
        export(foreign, "torchscript")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ckpt_path": None}, "no checkpoint given: pass ckpt_path=FILE"),
        ({"fmt": "tflite"}, "format='tflite' is not one of: onnx, torchscript"),
        ({"opset": 99}, "opset=99 is not an ONNX opset this exporter writes: choose 11 to 20"),
        ({"opset": 9}, "opset=9 is not an ONNX opset this exporter writes"),
        ({"batch_size": 0}, "batch_size=0 must be a whole number of images, at least 1"),
        ({"tta": "hflip_rotate"}, "tta=hflip_rotate in ONNX needs opset=20 or later .* opset=17 was asked for"),
    ],
)
def test_bad_settings_are_clear_errors(checkpoints, settings, message):
    arguments = {"ckpt_path": checkpoints["densenet169"], "fmt": "onnx", **settings}
    with pytest.raises(MuraError, match=message):
        export(**arguments)


def test_output_may_not_overwrite_the_checkpoint(checkpoints, tmp_path):
    ckpt = Path(shutil.copy(checkpoints["densenet169"], tmp_path / "model.torchscript.pt"))
    before = ckpt.read_bytes()
    with pytest.raises(MuraError, match=f"output={ckpt} is the checkpoint itself"):
        export(ckpt, "torchscript", output=ckpt)
    assert ckpt.read_bytes() == before


def test_onnx_without_the_onnx_package_says_what_to_install(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MuraError, match=r"format=onnx needs the onnx package: pip install 'mura-lightning\[onnx\]'"):
        export(checkpoints["densenet169"], "onnx")
