"""A two-process DDP fit on the CPU (gloo) of four batches in which rank 1 gets two bad ones: batch 1 missing
(every image unreadable, so the loader gives None) and batch 3 with a NaN pixel (so a non-finite loss). The
batches pass MURADataModule's hooks (data.on_error=skip), generated in place of its loaders. Both ranks should skip
batch 1 and stop with NonFiniteLossError for batch 3 at global step 2. Run as `python -m helpers.ddp_bad_batch`
with tests/ on the path."""

from __future__ import annotations

from functools import partial

import pandas as pd
import torch
from lightning import Trainer
from torch.utils.data import DataLoader

from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.models.module import MURAClassifier

MISSING_BATCH, NAN_BATCH = 1, 3  # on rank 1
BATCHES = 4
SIZE = 32


def make_batch(index: int, trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """Batch `index` of the rank `trainer` runs on: two random images, or a bad batch."""
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(index))
    if trainer.global_rank == 1 and index == MISSING_BATCH:
        return None
    if trainer.global_rank == 1 and index == NAN_BATCH:
        images[0, 0, 0, 0] = float("nan")
    ids = torch.tensor([2 * index, 2 * index + 1])
    return {"image": images, "label": torch.tensor([0, 1]), "body_part": torch.zeros(2, dtype=torch.long),
            "study": ids, "image_id": ids}  # fmt: skip


class GeneratedBatches(MURADataModule):
    """MURADataModule with generated batches in place of a MURA tree."""

    def __init__(self) -> None:
        preprocessing = {"image_size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3}
        super().__init__(root="generated", body_parts="shoulder", preprocessing=preprocessing, batch_size=2,
                         num_workers=0, val_fraction=0.1, seed=0, hflip_prob=0.5, rotation_degrees=0,
                         on_error="skip")  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Nothing to index."""

    @property
    def class_counts(self) -> pd.DataFrame:
        return pd.DataFrame()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(BATCHES), batch_size=None, collate_fn=partial(make_batch, trainer=self.trainer))


def main() -> None:
    torch.manual_seed(0)
    model = MURAClassifier(
        backbone={"name": "resnet50", "pretrained": False},
        preprocessing={"image_size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3},
        optimizer=partial(torch.optim.SGD, lr=0.01),
    )
    trainer = Trainer(
        accelerator="cpu", strategy="ddp", devices=2, max_epochs=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=GeneratedBatches())
    print(f"rank {trainer.global_rank} finished {trainer.global_step} steps", flush=True)


if __name__ == "__main__":
    main()
