"""Losses on one logit per image (or per study, for study poolings): MURA's per-body-part weighted BCE, plain BCE,
and focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError

COUNT_UNITS = ("images", "studies")


class MuraLoss(nn.Module):
    """A loss of (logits, labels, body-part indices), each of shape (N,) (N images, or N studies); mean over the
    batch."""

    def set_class_counts(self, counts: pd.DataFrame, unit: str = "images") -> None:
        """Receive the training class counts per body part (see `class_counts`), counted in `unit` (images or
        studies: what the loss is taken on); unused unless overridden."""

    def check_body_parts(self, body_parts: Sequence[str]) -> None:
        """Raise a MuraError when the loss cannot score some of `body_parts` (the module calls it once in setup, so
        that batches on a device need no check that waits for it); nothing unless overridden."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, body_parts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BCELoss(MuraLoss):
    """Binary cross-entropy on the logit, every image weighted alike."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, body_parts: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class WeightedBCELoss(MuraLoss):
    """The MURA paper's loss: for body part T, abnormal images weigh w1 = N_T / (A_T + N_T) and normal ones
    w0 = A_T / (A_T + N_T), with A_T and N_T the abnormal and normal training images of T (studies, for a loss on
    studies).

    `weights` holds (w0, w1) per entry of BODY_PARTS. `set_class_counts` sets it from the training data each
    time a run starts (a resumed run included), so it is not stored in checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((len(BODY_PARTS), 2), float("nan")), persistent=False)

    def set_class_counts(self, counts: pd.DataFrame, unit: str = "images") -> None:
        """Compute (w0, w1) for each body part present in `counts` from its `{unit}_normal` and `{unit}_abnormal`
        columns (unit: images or studies)."""
        if unit not in COUNT_UNITS:
            raise MuraError(f"class counts are in {' or '.join(COUNT_UNITS)}, not {unit!r}")
        weights = torch.full((len(BODY_PARTS), 2), float("nan"))
        for part, row in counts.iterrows():
            normal, abnormal = row[f"{unit}_normal"], row[f"{unit}_abnormal"]
            if normal + abnormal == 0:
                continue
            weights[BODY_PARTS.index(part)] = torch.tensor(
                [abnormal / (normal + abnormal), normal / (normal + abnormal)], dtype=torch.float32
            )
        self.weights.copy_(weights)

    def check_body_parts(self, body_parts: Sequence[str]) -> None:
        """Raise a MuraError naming the parts of `body_parts` without training counts."""
        counted = torch.isfinite(self.weights.cpu()).all(dim=1)
        self._refuse([part for part in body_parts if not counted[BODY_PARTS.index(part)]])

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, body_parts: torch.Tensor) -> torch.Tensor:
        """The weighted mean; on the CPU each batch's body parts are checked too (on a device, `check_body_parts`
        in setup does it without waiting for the device)."""
        per_image = self.weights[body_parts, labels.long()]
        if per_image.device.type == "cpu" and torch.isnan(per_image).any():
            self._refuse(sorted({BODY_PARTS[i] for i in body_parts[torch.isnan(per_image)].tolist()}))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), weight=per_image)

    @staticmethod
    def _refuse(missing: list[str]) -> None:
        if missing:
            raise MuraError(
                f"weighted_bce has no training counts for {', '.join(missing)}: set_class_counts must see every "
                "body part it is used on (the module does this in setup from the datamodule's class_counts)"
            )


class FocalLoss(MuraLoss):
    """Focal loss (Lin et al.) from torchvision: `alpha` weighs abnormal images (1 - alpha normal ones; a
    negative alpha turns weighting off), `gamma` down-weights easy images."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        if gamma < 0:
            raise MuraError(f"loss.gamma={gamma} must be >= 0")
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, body_parts: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits.float(), labels.float(), self.alpha, self.gamma, reduction="mean")
