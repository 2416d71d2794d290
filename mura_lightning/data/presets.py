"""Preprocessing presets in the manner of torchvision's classification references: what a model takes
(`Preprocessing`), the evaluation preset (resize, normalise), the training preset (resize, flip and rotate,
normalise) and the batch augmentation that flips and rotates a whole uint8 batch on its device."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F_nn
from torchvision.transforms.v2 import functional as F

from mura_lightning.errors import MuraError

IN_CHANS_CHOICES = (1, 3)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """What a model expects of its input: `image_size` square pixels, `in_chans` channels (3: the gray channel
    copied, 1: kept once), normalised with `mean`/`std` (one value per RGB channel; their averages for one
    channel). The model owns it (conf/preprocessing, stored in the checkpoint) and hands it to the data."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.in_chans not in IN_CHANS_CHOICES:
            raise MuraError(
                f"model.preprocessing.in_chans={self.in_chans} is not supported: use 1 (grayscale) or 3 (RGB copies)"
            )
        if not (isinstance(self.image_size, int) and self.image_size >= 1):
            raise MuraError(f"model.preprocessing.image_size={self.image_size!r} must be a positive number of pixels")
        if len(self.mean) != len(self.std) or not self.mean:
            raise MuraError(f"model.preprocessing mean={self.mean} and std={self.std} need one value per channel")
        if min(self.std) <= 0:
            raise MuraError(f"model.preprocessing.std={self.std} must be positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing of a config node or a checkpoint's hyperparameters."""
        return cls(**{key: values[key] for key in ("image_size", "mean", "std", "in_chans") if key in values})

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and sidecars."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @property
    def channel_mean(self) -> list[float]:
        """The mean subtracted from each input channel."""
        return list(self.mean) if self.in_chans == len(self.mean) else [float(np.mean(self.mean))] * self.in_chans

    @property
    def channel_std(self) -> list[float]:
        """The std each input channel is divided by."""
        return list(self.std) if self.in_chans == len(self.std) else [float(np.mean(self.std))] * self.in_chans


def resize(gray: np.ndarray, image_size: int) -> torch.Tensor:
    """The (1, S, S) uint8 tensor of an (H, W) uint8 radiograph, antialiased: the cacheable step."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise MuraError(f"a radiograph must be an (H, W) uint8 array, got shape {gray.shape} and dtype {gray.dtype}")
    return F.resize(torch.from_numpy(np.ascontiguousarray(gray)).unsqueeze(0), [image_size, image_size], antialias=True)


def normalize(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """The normalised float32 (..., in_chans, S, S) tensor of a (..., 1, S, S) uint8 image or batch."""
    scaled = images.to(torch.float32).div_(255.0)
    scaled = scaled.expand(*scaled.shape[:-3], preprocessing.in_chans, *scaled.shape[-2:])
    mean = torch.tensor(preprocessing.channel_mean, device=scaled.device).view(-1, 1, 1)
    std = torch.tensor(preprocessing.channel_std, device=scaled.device).view(-1, 1, 1)
    return (scaled - mean) / std


class BatchAugment:
    """Random horizontal flips (probability `hflip_prob`) and rotations (uniform in +-`rotation_degrees`, or in a
    [low, high] pair) of a (N, 1, S, S) uint8 batch on its own device: one affine grid for the batch, bilinear,
    black outside the image. The per-image training preset uses it too, so both paths augment alike."""

    def __init__(self, *, hflip_prob: float, rotation_degrees: float | Sequence[float]) -> None:
        if not 0.0 <= hflip_prob <= 1.0:
            raise MuraError(f"data.hflip_prob={hflip_prob} must lie in [0, 1]")
        if isinstance(rotation_degrees, Sequence):
            low, high = (float(v) for v in rotation_degrees)
        else:
            low, high = -float(rotation_degrees), float(rotation_degrees)
        if low > high:
            raise MuraError(f"data.rotation_degrees={rotation_degrees} must be a number or a [low, high] pair")
        self.hflip_prob = hflip_prob
        self.rotation_range = (low, high)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The augmented batch; angles and flips are drawn on the CPU (from `generator`, or the global one), so a
        seed gives the same draws on any device, and reach the device in one non-blocking copy."""
        count = len(images)
        draws = torch.rand(2, count, generator=generator)
        low, high = self.rotation_range
        draws[0].mul_(high - low).add_(low)
        draws[1] = (draws[1] < self.hflip_prob).float()
        if images.is_cuda:
            draws = draws.pin_memory().to(images.device, non_blocking=True)
        return rotate_and_flip(images, draws[0], draws[1] > 0.5)


def rotate_and_flip(images: torch.Tensor, degrees: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image of a (N, C, S, S) batch mirrored where `flips` and rotated by its angle in `degrees`
    (bilinear, zero outside); uint8 batches are rounded back to uint8."""
    angles = degrees.to(torch.float32) * (math.pi / 180.0)
    signs = torch.where(flips, -1.0, 1.0).to(angles.device)
    cos, sin, zeros = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos * signs, -sin, zeros], 1), torch.stack([sin * signs, cos, zeros], 1)], 1)
    grid = F_nn.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F_nn.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.dtype == torch.uint8:
        return moved.round_().clamp_(0, 255).to(torch.uint8)
    return moved


class EvalPreset:
    """An (H, W) uint8 radiograph -> the normalised (in_chans, S, S) input the model takes in evaluation."""

    def __init__(self, *, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def resize(self, gray: np.ndarray) -> torch.Tensor:
        """The resized (1, S, S) uint8 tensor."""
        return resize(gray, self.preprocessing.image_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised float tensor of a resized uint8 image or batch."""
        return normalize(images, self.preprocessing)

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        return self.normalize(self.resize(gray))


class TrainPreset(EvalPreset):
    """The evaluation preset with a random flip and rotation (`BatchAugment`) between resizing and normalising."""

    def __init__(self, *, preprocessing: Preprocessing, augment: BatchAugment) -> None:
        super().__init__(preprocessing=preprocessing)
        self.augment_batch = augment

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """A randomly flipped and rotated copy of a (1, S, S) uint8 image."""
        return self.augment_batch(image.unsqueeze(0))[0]

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        return self.normalize(self.augment(self.resize(gray)))
