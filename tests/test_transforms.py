"""Train and eval transforms: shapes, value ranges, normalisation and randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_lightning.data.transforms import RadiographTransform
from mura_lightning.errors import MuraError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make(train: bool, in_chans: int = 3, size: int = 32, degrees: float = 30.0) -> RadiographTransform:
    return RadiographTransform(size, train, 0.5, degrees, in_chans, MEAN, STD)


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
    transform = RadiographTransform(64, True, 0.0, (45.0, 45.0), 1, MEAN, STD)
    rotated = transform.augment(transform.resize(square))
    assert rotated[0, 0, 0] == 0 and rotated[0, 32, 32] == 255


def test_bad_settings_are_errors():
    with pytest.raises(MuraError, match="model.in_chans=2 is not supported"):
        make(False, in_chans=2)
    with pytest.raises(MuraError, match="data.image_size=0 must be a positive"):
        make(False, size=0)
