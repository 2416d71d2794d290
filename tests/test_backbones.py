"""Backbones: one-logit heads, grayscale input, and ImageNet weights from the hub cache or a file, never
silently random."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch
from torchvision import models

from mura_lightning.errors import MuraError
from mura_lightning.models.backbones import (
    PretrainedWeightsError,
    build_backbone,
    expected_weights_file,
)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "torch"


@pytest.mark.parametrize("name", ["densenet169", "resnet50"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_one_logit_per_image(name, in_chans):
    net = build_backbone(name, pretrained=False, in_chans=in_chans)
    assert net(torch.zeros(2, in_chans, 32, 32)).shape == (2, 1)


def test_pretrained_offline_without_cache_names_the_file_to_place(offline):
    expected = offline / "hub" / "checkpoints" / "densenet169-b2777c0a.pth"
    assert expected_weights_file("densenet169", "IMAGENET1K_V1") == expected
    with pytest.raises(PretrainedWeightsError) as err:
        build_backbone("densenet169", pretrained=True, in_chans=3, weights="IMAGENET1K_V1")
    message = str(err.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/densenet169-b2777c0a.pth" in message
    assert "model.backbone.weights_path=FILE" in message


def test_pretrained_weights_come_from_the_hub_cache(offline):
    reference = models.resnet50(weights=None)
    cached = expected_weights_file("resnet50", "IMAGENET1K_V2")
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    net = build_backbone("resnet50", pretrained=True, in_chans=3, weights="IMAGENET1K_V2")
    torch.testing.assert_close(net.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert net.fc.out_features == 1


def test_grayscale_first_filters_are_the_sum_over_rgb(tmp_path, offline):
    reference = models.densenet169(weights=None)
    state = reference.state_dict()
    # the published DenseNet files use old layer names (norm.1); they must still load
    old_style = {re.sub(r"(denselayer\d+\.norm)(1)\.", r"\1.\2.", key): value for key, value in state.items()}
    assert old_style.keys() != state.keys()
    path = tmp_path / "densenet169.pth"
    torch.save(old_style, path)
    net = build_backbone("densenet169", pretrained=True, in_chans=1, weights_path=str(path))
    torch.testing.assert_close(net.features.conv0.weight, reference.features.conv0.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        net.features.denseblock4.denselayer32.norm1.weight, reference.features.denseblock4.denselayer32.norm1.weight
    )


def test_weights_of_another_architecture_are_refused(tmp_path, offline):
    path = tmp_path / "resnet.pth"
    torch.save(models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="do not fit densenet169"):
        build_backbone("densenet169", pretrained=True, in_chans=3, weights_path=str(path))


def test_bad_names_and_paths_are_clear_errors(tmp_path, offline):
    with pytest.raises(MuraError, match="unknown backbone 'densenet121': choose one of densenet169, resnet50"):
        build_backbone("densenet121", pretrained=False, in_chans=3)
    with pytest.raises(MuraError, match="weights_path=.*nothere.pth does not exist"):
        build_backbone("resnet50", pretrained=True, in_chans=3, weights_path=str(tmp_path / "nothere.pth"))
    with pytest.raises(MuraError, match="'IMAGENET9K' is not a ResNet50_Weights entry"):
        build_backbone("resnet50", pretrained=True, in_chans=3, weights="IMAGENET9K")
    with pytest.raises(MuraError, match="in_chans=4 is not supported"):
        build_backbone("resnet50", pretrained=False, in_chans=4)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read ImageNet weights from .*junk.pth"):
        build_backbone("resnet50", pretrained=True, in_chans=3, weights_path=str(tmp_path / "junk.pth"))
