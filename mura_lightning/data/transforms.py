"""Image transforms: resize (the cacheable step), random flip and rotation (train only), normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F_nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mura_lightning.errors import MuraError


class RadiographTransform:
    """Turns an (H, W) uint8 radiograph into a normalised float tensor of shape (in_chans, size, size).

    Steps: `resize` to a square of `image_size`; when `train`, `augment` with a random horizontal flip and
    a random rotation up to `rotation_degrees`; `normalize` with the mean/std (for `in_chans=3` the gray
    channel is replicated and each copy normalised with its ImageNet statistic; for `in_chans=1` the
    averages of `mean` and `std` are used).
    """

    def __init__(
        self,
        image_size: int,
        train: bool,
        hflip_prob: float,
        rotation_degrees: float | Sequence[float],
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if in_chans not in (1, 3):
            raise MuraError(f"model.in_chans={in_chans} is not supported: use 1 (grayscale) or 3 (RGB copies)")
        if image_size < 1:
            raise MuraError(f"data.image_size={image_size} must be a positive number of pixels")
        self.image_size = image_size
        self.train = train
        self.in_chans = in_chans
        self.hflip_prob = hflip_prob
        self.rotation_range = (
            (float(rotation_degrees[0]), float(rotation_degrees[1]))
            if isinstance(rotation_degrees, Sequence)
            else (-float(rotation_degrees), float(rotation_degrees))
        )
        self._augment = v2.Compose([v2.RandomHorizontalFlip(hflip_prob), v2.RandomRotation(rotation_degrees, fill=0)])
        if in_chans == 1:
            mean, std = [np.mean(mean)], [np.mean(std)]
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]  # per input channel
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def resize(self, gray: np.ndarray) -> torch.Tensor:
        """The (1, size, size) uint8 tensor of an (H, W) uint8 array, antialiased."""
        tensor = torch.from_numpy(gray).unsqueeze(0)
        return F.resize(tensor, [self.image_size, self.image_size], antialias=True)

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """A randomly flipped and rotated copy of a (1, S, S) uint8 tensor."""
        return self._augment(image)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """The normalised float tensor (..., in_chans, S, S) of a (..., 1, S, S) uint8 tensor or batch."""
        scaled = image.to(torch.float32).div_(255.0)
        scaled = scaled.expand(*scaled.shape[:-3], self.in_chans, *scaled.shape[-2:])
        return (scaled - self._mean.to(scaled.device)) / self._std.to(scaled.device)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """A randomly flipped and rotated copy of a (N, 1, S, S) uint8 batch, on the batch's device: one affine
        grid for the whole batch (bilinear, black fill), angles and flips drawn per image from the CPU's random
        generator, so a seed gives the same draws whatever the device."""
        count = len(images)
        angles = torch.deg2rad(torch.empty(count).uniform_(*self.rotation_range)).to(images.device)
        flips = torch.where(torch.rand(count) < self.hflip_prob, -1.0, 1.0).to(images.device)
        cos, sin = torch.cos(angles), torch.sin(angles)
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos * flips, -sin, zeros], 1), torch.stack([sin * flips, cos, zeros], 1)], 1)
        grid = F_nn.affine_grid(theta, list(images.shape), align_corners=False)
        rotated = F_nn.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return rotated.round_().clamp_(0, 255).to(torch.uint8)

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """Resize, augment when training, normalise."""
        image = self.resize(gray)
        if self.train:
            image = self.augment(image)
        return self.normalize(image)
