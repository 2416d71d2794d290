"""Training images/s of MURAClassifier under the Lightning Trainer against a plain PyTorch loop: same backbone,
batch, in-memory data and precision, on the CPU at a small size.

python benchmarks/train_step.py [--backbone densenet169] [--size 64] [--batch-size 16] [--steps 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from mura_lightning.models.losses import BCELoss
from mura_lightning.models.module import MURAClassifier

WARMUP_STEPS = 3


class InMemory(Dataset):
    """Random normalised images with the batch keys the module expects."""

    def __init__(self, count: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.labels = (torch.rand(count, generator=generator) > 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index],
            "label": self.labels[index],
            "study": torch.tensor(index),
            "body_part": torch.tensor(0),
            "image_id": torch.tensor(index),
        }


def classifier(backbone: str, size: int) -> MURAClassifier:
    torch.manual_seed(0)
    return MURAClassifier(
        backbone={"name": backbone, "pretrained": False},
        preprocessing={"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3},
        loss=BCELoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
    )


def plain_loop(backbone: str, data: InMemory, batch_size: int, steps: int, precision: str) -> float:
    """Images/s of a hand-written loop: forward, BCE, backward, Adam step."""
    net = classifier(backbone, data.images.shape[-1]).net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)
    started = None
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = net(batch["image"]).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


class StepClock(Callback):
    """Times the training steps after the warm-up ones."""

    def __init__(self) -> None:
        self.started = self.finished = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == WARMUP_STEPS:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.finished = time.perf_counter()


def lightning_loop(backbone: str, data: InMemory, batch_size: int, steps: int, precision: str) -> float:
    """Images/s of the same steps through the Lightning Trainer and MURAClassifier.training_step."""
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=WARMUP_STEPS + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    trainer.fit(classifier(backbone, data.images.shape[-1]), train_dataloaders=loader)
    return steps * batch_size / (clock.finished - clock.started)


def main() -> None:
    """Print the figures, one `name=value` per line, last (best of `--rounds` alternating rounds each)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="densenet169")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    data = InMemory((WARMUP_STEPS + args.steps + 1) * args.batch_size, args.size)
    plain, lightning = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(args.backbone, data, args.batch_size, args.steps, args.precision))
        lightning.append(lightning_loop(args.backbone, data, args.batch_size, args.steps, args.precision))
    print(
        f"backbone={args.backbone} size={args.size} batch_size={args.batch_size} steps={args.steps} "
        f"precision={args.precision} threads={torch.get_num_threads()}"
    )
    print(f"plain_images_per_s={max(plain):.2f}")
    print(f"lightning_images_per_s={max(lightning):.2f}")
    print(f"lightning_over_plain={max(lightning) / max(plain):.3f}")


if __name__ == "__main__":
    main()
