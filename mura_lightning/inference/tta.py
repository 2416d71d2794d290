"""Test-time augmentation: the views of a normalised batch whose probabilities a prediction averages."""

from __future__ import annotations

import torch
from torch import nn

from mura_lightning.data.presets import Preprocessing, rotate_and_flip
from mura_lightning.errors import MuraError

TTA_CHOICES = ("none", "hflip", "hflip_rotate")


class TestTimeAugmentation(nn.Module):
    """Maps a normalised (N, C, S, S) batch to its views stacked as (V, N, C, S, S).

    `none`: the batch itself (V=1); `hflip`: it and its mirror image (V=2); `hflip_rotate`: those two, each also
    rotated by -`degrees` and +`degrees` (V=6, bilinear, black outside the image as in training).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, mode: str, degrees: float, preprocessing: Preprocessing) -> None:
        super().__init__()
        if mode not in TTA_CHOICES:
            raise MuraError(f"tta={mode!r} is not one of {', '.join(TTA_CHOICES)}")
        if mode == "hflip_rotate" and not 0 < degrees <= 180:
            raise MuraError(f"tta_degrees={degrees} must lie in (0, 180]")
        self.mode = mode
        self.degrees = float(degrees)
        black = [-m / s for m, s in zip(preprocessing.channel_mean, preprocessing.channel_std, strict=True)]
        self.register_buffer("black", torch.tensor(black).view(1, -1, 1, 1), persistent=False)

    @property
    def num_views(self) -> int:
        """How many views each image gives."""
        return {"none": 1, "hflip": 2, "hflip_rotate": 6}[self.mode]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return images.unsqueeze(0)
        views = [images, torch.flip(images, dims=[-1])]
        if self.mode == "hflip_rotate":
            views += [self._rotate(view, angle) for view in views[:2] for angle in (-self.degrees, self.degrees)]
        return torch.stack(views)

    def _rotate(self, images: torch.Tensor, degrees: float) -> torch.Tensor:
        angles = torch.full_like(images[:, 0, 0, 0], degrees)  # one per image; follows the batch size when traced
        return rotate_and_flip(images - self.black, angles, torch.zeros_like(angles, dtype=torch.bool)) + self.black
