"""Torch Hub: hubconf.py loads a checkpoint as a ready InferenceModel, lists one entry point, and says what is
missing when no checkpoint is given."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import REPO_ROOT, compose_run

from mura_lightning.errors import MuraError
from mura_lightning.inference.checkpoints import load_classifier
from mura_lightning.inference.model import InferenceModel
from mura_lightning.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained DenseNet-169 checkpoint and the MURA tree it was trained on."""
    tmp = tmp_path_factory.mktemp("hub")
    root = write_tree(tmp, standard_studies())
    return Path(train(compose_run(root, tmp, "test=false"))["ckpt_path"]), root


def test_hub_load_gives_the_checkpoints_probabilities(trained):
    ckpt, root = trained
    model = torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local", checkpoint=str(ckpt))
    assert isinstance(model, InferenceModel)
    assert not model.training and not model.members()[0].training
    images = sorted(root.glob("valid/XR_WRIST/*/*/*.png"))[:3]
    classifier = load_classifier(ckpt)
    batch = torch.stack([model.preprocess(image) for image in images])
    with torch.no_grad():
        expected = torch.sigmoid(classifier(batch))
    torch.testing.assert_close(model.predict(images), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(batch).detach(), expected, rtol=0, atol=1e-6)


def test_hub_lists_and_documents_the_entry_point(monkeypatch):
    # torch.hub.list and torch.hub.help only take GitHub repositories; point their download at this checkout.
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO_ROOT))
    assert torch.hub.list("owner/mura-lightning", trust_repo=True) == ["mura_classifier"]
    doc = torch.hub.help("owner/mura-lightning", "mura_classifier", trust_repo=True)
    assert "checkpoint" in doc and "model.predict(" in doc and "model.preprocess(" in doc and "model(batch)" in doc


def test_missing_checkpoint_is_a_clear_error():
    with pytest.raises(
        MuraError, match=r'mura_classifier needs a checkpoint: torch.hub.load\(REPO_DIR, "mura_classifier"'
    ):
        torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local")


def test_a_checkpoint_that_is_not_there_names_the_path(tmp_path):
    with pytest.raises(MuraError, match=f"ckpt_path={tmp_path}/none.ckpt does not exist"):
        torch.hub.load(str(REPO_ROOT), "mura_classifier", source="local", checkpoint=tmp_path / "none.ckpt")


def test_the_inference_model_docstring_example_runs(trained, tmp_path, monkeypatch, capsys):
    ckpt, root = trained
    (example,) = re.findall(r"```python\n(.*?)```", textwrap.dedent(InferenceModel.__doc__.split("Example:")[1]), re.S)
    images = sorted(root.glob("valid/**/*.png"))[:2]
    for name, image in zip(("image1.png", "image2.png"), images, strict=True):
        (tmp_path / name).write_bytes(image.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(example.replace("outputs/train/RUN/checkpoints/best-epoch005.ckpt", str(ckpt)), {})
    expected = InferenceModel.from_checkpoints(str(ckpt), tta="hflip").predict(images).mean()
    assert capsys.readouterr().out.startswith(f"study probability {expected:.3f}: ")
