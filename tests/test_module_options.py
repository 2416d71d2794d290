"""Speed options of MURAClassifier: torch.compile and channels_last change the speed, not the model, and a compile
that fails or outlasts its time falls back to eager."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

from mura_lightning.models.compiled import CompiledForward, CompileFallbackWarning
from mura_lightning.models.module import MURAClassifier

PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def classifier(**options) -> MURAClassifier:
    torch.manual_seed(0)
    backbone = {"name": "resnet50", "pretrained": False}
    return MURAClassifier(backbone=backbone, preprocessing=PREPROCESSING, **options).eval()


def test_a_compiled_model_has_the_plain_weights_and_logits_and_compiles_only_training(monkeypatch):
    compile_eagerly, compiled_calls = torch.compile, []

    def compile_counting(fn, **options):
        compiled = compile_eagerly(fn, backend="eager")
        return lambda *args: compiled_calls.append(len(args)) or compiled(*args)

    monkeypatch.setattr(torch, "compile", compile_counting)
    plain, compiled = classifier(), classifier(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images))
    assert not compiled_calls, "evaluation ran the compiled forward"
    torch.testing.assert_close(compiled.train()(images), plain.train()(images))
    assert compiled_calls and compiled._train_forward.compile_seconds is not None


def test_a_compile_that_fails_falls_back_to_eager_with_one_warning(monkeypatch):
    def failing_compile(fn, **options):
        def compiled(*args):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    plain, compiled = classifier().train(), classifier(compile=True).train()
    compiled.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with pytest.warns(CompileFallbackWarning, match="BackendCompilerFailed.*training continues without compiling"):
        torch.testing.assert_close(compiled(images), plain(images))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(images)  # no second warning
    assert "no C++ compiler" in compiled._train_forward.fallback


def test_an_unknown_compile_mode_falls_back_to_eager():
    with pytest.warns(CompileFallbackWarning, match="mode='fastest'.*Unrecognized mode"):
        model = classifier(compile=True, compile_mode="fastest")
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2,)


def test_a_compile_that_outlasts_its_time_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **options: lambda *args: time.sleep(30))
    model = classifier(compile=True, compile_timeout_s=0.2).train()
    started = time.perf_counter()
    with pytest.warns(CompileFallbackWarning, match="took longer than 0.2 s"):
        assert model(torch.randn(2, 3, 32, 32)).shape == (2,)
    assert time.perf_counter() - started < 20


def test_the_compile_cache_folder_is_inductors(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    CompiledForward(lambda x: x, cache_dir=tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(tmp_path / "cache")


def test_channels_last_keeps_the_logits_and_uses_nhwc():
    plain, nhwc = classifier(), classifier(channels_last=True)
    assert nhwc.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-5)
