"""A trained model ready to use outside training: preprocessing and probabilities in one module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mura_lightning.checkpoints import load_classifier
from mura_lightning.data.images import read_grayscale, to_grayscale
from mura_lightning.data.transforms import RadiographTransform


class MuraInference(nn.Module):
    """`forward` maps a normalised batch (N, C, S, S) to abnormality probabilities (N,); `preprocess` turns a
    radiograph (file path, PIL image or uint8 array) into that normalised (C, S, S) tensor, exactly as in
    evaluation; `predict` does both for a list of radiographs."""

    def __init__(self, net: nn.Module, transform: RadiographTransform) -> None:
        super().__init__()
        self.net = net.eval()
        self.transform = transform
        self.image_size = transform.image_size
        self.in_chans = transform.in_chans
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> MuraInference:
        """The model of a mura-lightning checkpoint with the preprocessing it was trained with."""
        classifier = load_classifier(path)
        return cls(classifier.net, classifier.eval_transform())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images).squeeze(1))

    def preprocess(self, image: str | Path | Image.Image | np.ndarray) -> torch.Tensor:
        """The normalised (C, S, S) tensor of one radiograph."""
        if isinstance(image, (str, Path)):
            gray = read_grayscale(image)
        elif isinstance(image, Image.Image):
            gray = to_grayscale(image)
        else:
            gray = np.asarray(image, dtype=np.uint8)
        return self.transform(gray)

    @torch.no_grad()
    def predict(self, images: list[str | Path | Image.Image | np.ndarray]) -> torch.Tensor:
        """Abnormality probabilities of a list of radiographs."""
        device = next(self.parameters()).device
        batch = torch.stack([self.preprocess(image) for image in images]).to(device)
        return self(batch).cpu()
