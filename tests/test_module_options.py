"""Speed options of MURAClassifier: torch.compile and channels_last change the speed, not the model."""

from __future__ import annotations

import torch

from mura_lightning.models.module import MURAClassifier

PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def classifier(**options) -> MURAClassifier:
    torch.manual_seed(0)
    backbone = {"name": "resnet50", "pretrained": False}
    return MURAClassifier(backbone=backbone, preprocessing=PREPROCESSING, **options).eval()


def test_a_compiled_model_has_the_plain_weights_and_logits(monkeypatch):
    compile_eagerly = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn: compile_eagerly(fn, backend="eager"))
    plain, compiled = classifier(), classifier(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images))


def test_channels_last_keeps_the_logits_and_uses_nhwc():
    plain, nhwc = classifier(), classifier(channels_last=True)
    assert nhwc.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-5)
