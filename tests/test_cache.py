"""The preprocessed image cache and device-side augmentation: same eval tensors, rebuilt when its inputs
change, never half-built, and a training run on top of both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.mura_trees import write_image
from helpers.runs import build_datamodule, compose_run

from mura_lightning.data import cache as cache_module
from mura_lightning.data.cache import MANIFEST_FILE, build_cache
from mura_lightning.data.images import ImageDecodeError
from mura_lightning.data.index import MuraDataError
from mura_lightning.data.presets import BatchAugment
from mura_lightning.train import train

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def datamodule(root, tmp_path, *overrides):
    module = build_datamodule(root, f"data.cache_dir={tmp_path}/cache", *overrides)
    module.prepare_data()
    module.setup()
    return module


def eval_batches(module, stage):
    loader = module.val_dataloader() if stage == "val" else module.test_dataloader()
    return [module.on_after_batch_transfer(batch, 0) for batch in loader]


@pytest.mark.parametrize("stage", ["val", "test"])
def test_cached_eval_tensors_equal_the_uncached_ones_to_the_bit(mura_root, tmp_path, stage):
    plain = eval_batches(datamodule(mura_root, tmp_path), stage)
    cached = eval_batches(datamodule(mura_root, tmp_path, "data.cache=true"), stage)
    device_side = eval_batches(datamodule(mura_root, tmp_path, "data.cache=true", "data.gpu_augment=true"), stage)
    assert len(plain) == len(cached) == len(device_side)
    for first, second, third in zip(plain, cached, device_side, strict=True):
        assert torch.equal(first["image"], second["image"])
        assert torch.equal(first["image"], third["image"])
        assert torch.equal(first["image_id"], second["image_id"])


def test_the_cache_is_reused_and_rebuilt_when_its_inputs_change(mura_root, tmp_path):
    paths = sorted(str(p) for p in mura_root.rglob("*.png"))
    first = build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    stamp = (first.folder / MANIFEST_FILE).stat().st_mtime_ns
    again = build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    assert again.folder == first.folder and (again.folder / MANIFEST_FILE).stat().st_mtime_ns == stamp
    assert build_cache(paths, 48, tmp_path / "cache", num_workers=1).folder != first.folder
    write_image(mura_root / paths[0], seed=99, size=(30, 30))
    changed = build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    assert changed.folder != first.folder
    assert changed[paths[0]].shape == (32, 32)


def test_a_killed_build_leaves_no_cache_that_looks_complete(mura_root, tmp_path, monkeypatch):
    paths = sorted(str(p) for p in mura_root.rglob("*.png"))
    original = cache_module._resize_chunk
    calls = []

    def dies_on_second_chunk(chunk, target, image_size):
        calls.append(chunk[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(chunk, target, image_size)

    monkeypatch.setattr(cache_module, "_resize_chunk", dies_on_second_chunk)
    monkeypatch.setattr(cache_module, "CHUNK_SIZE", 8)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(cache_module, "_resize_chunk", original)
    built = build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    assert (built.folder / MANIFEST_FILE).is_file() and built.readable.all()


def test_an_unreadable_image_in_the_cache_is_still_a_clear_error_or_skipped(mura_root, tmp_path):
    module = datamodule(mura_root, tmp_path)
    bad = module.datasets["val"].paths[0]
    with open(bad, "wb") as handle:
        handle.write(b"broken")
    cached = datamodule(mura_root, tmp_path / "raise", "data.cache=true")
    assert not cached.datasets["val"].cache.readable[cached.datasets["val"].cache.positions[bad]]
    with pytest.raises(ImageDecodeError, match=bad):
        eval_batches(cached, "val")
    skipping = datamodule(mura_root, tmp_path / "skip", "data.cache=true", "data.on_error=skip")
    assert sum(len(batch["label"]) for batch in eval_batches(skipping, "val")) == len(skipping.datasets["val"]) - 1


def make_transform(hflip_prob: float, degrees) -> BatchAugment:
    return BatchAugment(hflip_prob=hflip_prob, rotation_degrees=degrees)


def test_batch_augmentation_flips_and_rotates_per_image():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 1, 16, 16), dtype=np.uint8))
    assert torch.equal(make_transform(0.0, 0.0)(images), images)
    assert torch.equal(make_transform(1.0, 0.0)(images), images.flip(-1))
    square = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    square[..., 4:12, 4:12] = 255
    quarter = make_transform(0.0, (90.0, 90.0))(square)
    assert torch.equal(quarter, torch.rot90(square, 1, dims=(-2, -1))) or torch.equal(
        quarter, torch.rot90(square, -1, dims=(-2, -1))
    )
    torch.manual_seed(1)
    augmented = make_transform(0.5, 30.0)(images)
    assert augmented.dtype == torch.uint8 and augmented.shape == images.shape
    differing = [not torch.equal(augmented[i], images[i]) for i in range(len(images))]
    assert all(differing)


def test_training_on_the_cache_with_device_augmentation(mura_root, tmp_path):
    results = train(
        compose_run(mura_root, tmp_path, "data.cache=true", "data.gpu_augment=true", f"data.cache_dir={tmp_path}/cache")
    )
    assert isinstance(results["test/study/kappa"], float)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_cache_without_a_folder_is_a_clear_error(mura_root, tmp_path):
    with pytest.raises(MuraDataError, match="data.cache=true needs data.cache_dir"):
        datamodule(mura_root, tmp_path, "data.cache=true", "data.cache_dir=null")


def test_device_transform_augments_only_training_batches(mura_root, tmp_path):
    module = datamodule(mura_root, tmp_path, "data.cache=true", "data.gpu_augment=true")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.uint8
    evaluated = module.device_transform(batch, train=False)
    assert torch.equal(evaluated["image"], module.eval_preset.normalize(batch["image"]))
    torch.manual_seed(0)
    trained = module.device_transform(batch, train=True)
    assert trained["image"].dtype == torch.float32 and trained["image"].shape == evaluated["image"].shape
    assert not torch.equal(trained["image"], evaluated["image"])
