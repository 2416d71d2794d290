"""Preprocessing presets: shapes, value ranges, normalisation, randomness, and one augmentation for both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_lightning.data.presets import BatchAugment, EvalPreset, Preprocessing, TrainPreset, rotate_and_flip
from mura_lightning.errors import MuraError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocessing(in_chans: int = 3, size: int = 32) -> Preprocessing:
    return Preprocessing(image_size=size, mean=MEAN, std=STD, in_chans=in_chans)


def make(train: bool, in_chans: int = 3, size: int = 32, degrees: float = 30.0) -> EvalPreset:
    if not train:
        return EvalPreset(preprocessing=preprocessing(in_chans, size))
    augment = BatchAugment(hflip_prob=0.5, rotation_degrees=degrees)
    return TrainPreset(preprocessing=preprocessing(in_chans, size), augment=augment)


@pytest.fixture
def radiograph():
    return np.random.default_rng(1).integers(0, 256, size=(90, 70), dtype=np.uint8)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_shape_dtype_and_range(radiograph, train, in_chans):
    image = make(train, in_chans)(radiograph)
    assert image.shape == (in_chans, 32, 32) and image.dtype == torch.float32
    mean = torch.tensor(MEAN if in_chans == 3 else [np.mean(MEAN)]).view(-1, 1, 1)
    std = torch.tensor(STD if in_chans == 3 else [np.mean(STD)]).view(-1, 1, 1)
    assert (image >= (0 - mean) / std - 1e-6).all() and (image <= (1 - mean) / std + 1e-6).all()


def test_three_channels_are_the_gray_normalised_per_channel():
    white = np.full((50, 50), 255, dtype=np.uint8)
    image = make(False)(white)
    for channel in range(3):
        expected = (1.0 - MEAN[channel]) / STD[channel]
        torch.testing.assert_close(image[channel], torch.full((32, 32), expected))


def test_single_channel_uses_the_average_statistics():
    mid = np.full((50, 50), 51, dtype=np.uint8)
    image = make(False, in_chans=1)(mid)
    torch.testing.assert_close(image, torch.full((1, 32, 32), (0.2 - np.mean(MEAN)) / np.mean(STD)))


def test_eval_is_deterministic_and_train_is_random(radiograph):
    evaluate = make(False)
    torch.testing.assert_close(evaluate(radiograph), evaluate(radiograph))
    train = make(True)
    torch.manual_seed(0)
    first = train(radiograph)
    torch.manual_seed(0)
    torch.testing.assert_close(train(radiograph), first)
    assert any(not torch.equal(train(radiograph), first) for _ in range(5))


def test_rotation_keeps_the_image_on_a_black_fill():
    square = np.full((64, 64), 255, dtype=np.uint8)
    preset = TrainPreset(
        preprocessing=preprocessing(1, 64), augment=BatchAugment(hflip_prob=0.0, rotation_degrees=(45, 45))
    )
    rotated = preset.augment(preset.resize(square))
    assert rotated[0, 0, 0] == 0 and rotated[0, 32, 32] == 255


def test_the_per_image_and_the_batch_path_augment_alike(radiograph):
    """The training preset (CPU workers) and BatchAugment (the device) draw and interpolate the same way: with the
    same seed they give the same pixels."""
    preset = make(True, in_chans=1)
    image = preset.resize(radiograph)
    torch.manual_seed(3)
    one_by_one = preset.augment(image)
    torch.manual_seed(3)
    batched = preset.augment_batch(image.unsqueeze(0))[0]
    assert torch.equal(one_by_one, batched)


def test_rotation_is_bilinear():
    """A 90-degree turn of a ramp is exact; at 45 degrees bilinear interpolation gives values between the ramp's
    neighbours that nearest-neighbour sampling could not (a sharp edge turns into in-between grays)."""
    edge = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    edge[..., :, 16:] = 200
    turned = rotate_and_flip(edge, torch.tensor([45.0]), torch.tensor([False]))
    inside = turned[0, 0, 8:24, 8:24]
    assert ((inside > 10) & (inside < 190)).any()


def test_flip_mirrors_the_image():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    flipped = rotate_and_flip(image, torch.zeros(1), torch.tensor([True]))
    assert torch.equal(flipped, torch.flip(image, dims=[-1]))


def test_bad_settings_are_errors():
    with pytest.raises(MuraError, match="model.preprocessing.in_chans=2 is not supported"):
        preprocessing(in_chans=2)
    with pytest.raises(MuraError, match="model.preprocessing.image_size=0 must be a positive"):
        preprocessing(size=0)
    with pytest.raises(MuraError, match="std=.* must be positive"):
        Preprocessing(image_size=8, mean=(0.5,), std=(0.0,))
    with pytest.raises(MuraError, match="data.hflip_prob=1.5 must lie in"):
        BatchAugment(hflip_prob=1.5, rotation_degrees=0)
    with pytest.raises(MuraError, match=r"must be an \(H, W\) uint8 array"):
        make(False)(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError):
        EvalPreset(preprocessing(), None)  # keyword-only, as torchvision's presets
