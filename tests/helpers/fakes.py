"""Test doubles reachable from Hydra configs (`_target_: helpers.fakes.X`)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from mura_lightning.models.losses import MuraLoss


class NaNLoss(MuraLoss):
    """A loss that turns NaN on its second call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits, labels, body_parts):
        self.calls += 1
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return value * float("nan") if self.calls >= 2 else value


class ResumeProbe(Callback):
    """Saves where training starts (epoch, step, optimizer and scheduler state) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(
            {
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "optimizer": trainer.optimizers[0].state_dict(),
                "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            },
            self.path,
        )
