"""Image transforms: resize (the cacheable step), random flip and rotation (train only), normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
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
        rotation_degrees: float,
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
        self._augment = v2.Compose([v2.RandomHorizontalFlip(hflip_prob), v2.RandomRotation(rotation_degrees, fill=0)])
        if in_chans == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        self._mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def resize(self, gray: np.ndarray) -> torch.Tensor:
        """The (1, size, size) uint8 tensor of an (H, W) uint8 array, antialiased."""
        tensor = torch.from_numpy(gray).unsqueeze(0)
        return F.resize(tensor, [self.image_size, self.image_size], antialias=True)

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """A randomly flipped and rotated copy of a (1, S, S) uint8 tensor."""
        return self._augment(image)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """The normalised float tensor (in_chans, S, S) of a (1, S, S) uint8 tensor."""
        scaled = image.to(torch.float32).div_(255.0).expand(self.in_chans, -1, -1)
        return (scaled - self._mean) / self._std

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """Resize, augment when training, normalise."""
        image = self.resize(gray)
        if self.train:
            image = self.augment(image)
        return self.normalize(image)
