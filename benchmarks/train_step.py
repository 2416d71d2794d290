"""Training images/s of MURAClassifier under the Lightning Trainer against a plain PyTorch loop: same backbone,
batch, in-memory data and precision; on the CPU at a small size by default (`gpu.py` runs the same on a GPU).

python benchmarks/train_step.py [--backbone densenet169] [--size 64] [--batch-size 16] [--steps 10] [--rounds 5]

The loops alternate, plain first and last (P L P L ... P, `--rounds` Lightning runs), and each Lightning run is
compared with the mean of the plain runs on either side of it, so drift of a shared machine's speed cancels to
first order. The ratio printed is the median of those per-run ratios, with their min and max as its spread.
"""

from __future__ import annotations

import argparse
import statistics
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
    """Random normalised images with the batch keys the module expects, kept on `device`."""

    def __init__(self, count: int, size: int, device: torch.device | str = "cpu") -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=generator).to(device)
        self.labels = (torch.rand(count, generator=generator) > 0.5).float().to(device)

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


def classifier(backbone: str, size: int, channels_last: bool = False) -> MURAClassifier:
    torch.manual_seed(0)
    return MURAClassifier(
        backbone={"name": backbone, "pretrained": False},
        preprocessing={"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3},
        channels_last=channels_last,
        loss=BCELoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(
    backbone: str,
    data: InMemory,
    batch_size: int,
    steps: int,
    precision: str,
    channels_last: bool = False,
    warmup: int = WARMUP_STEPS,
) -> float:
    """Images/s of a hand-written loop: forward, BCE, backward, Adam step (after `warmup` untimed steps)."""
    device = data.images.device
    model = classifier(backbone, data.images.shape[-1], channels_last).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started = time.perf_counter()
        batch = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(batch["image"].to(device))
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


class StepClock(Callback):
    """Times the training steps after the warm-up ones (waiting for the device at both ends)."""

    def __init__(self, warmup: int, last_step: int) -> None:
        self.warmup = warmup
        self.last_step = last_step
        self.started = self.finished = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last_step:
            synchronize(pl_module.device)
            self.finished = time.perf_counter()


def timing_trainer(accelerator: str, precision: str, max_steps: int, clock: Callback) -> L.Trainer:
    """A Trainer that only trains, `max_steps` steps on one device, timed by `clock`: no validation, logger,
    checkpoints, progress bar or model summary."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )


def lightning_loop(
    backbone: str,
    data: InMemory,
    batch_size: int,
    steps: int,
    precision: str,
    channels_last: bool = False,
    warmup: int = WARMUP_STEPS,
) -> float:
    """Images/s of the same steps through the Lightning Trainer and MURAClassifier.training_step."""
    device = data.images.device
    clock = StepClock(warmup, last_step=warmup + steps - 1)
    trainer = timing_trainer("gpu" if device.type == "cuda" else "cpu", precision, warmup + steps, clock)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    trainer.fit(classifier(backbone, data.images.shape[-1], channels_last), train_dataloaders=loader)
    return steps * batch_size / (clock.finished - clock.started)


def interleaved_ratio(
    backbone: str,
    data: InMemory,
    batch_size: int,
    steps: int,
    precision: str,
    rounds: int,
    channels_last: bool = False,
    warmup: int = WARMUP_STEPS,
) -> dict[str, float]:
    """Lightning over plain images/s from P L P L ... P runs: each Lightning run against the mean of its two
    neighbouring plain runs; the median ratio, its min and max, and the median images/s of each loop."""
    if rounds < 1:
        raise ValueError(f"--rounds={rounds}: at least one Lightning run is needed")
    settings = (backbone, data, batch_size, steps, precision, channels_last, warmup)
    plain = [plain_loop(*settings)]
    lightning = []
    for _ in range(rounds):
        lightning.append(lightning_loop(*settings))
        plain.append(plain_loop(*settings))
    neighbours = [(before + after) / 2 for before, after in zip(plain, plain[1:], strict=False)]
    ratios = [speed / reference for speed, reference in zip(lightning, neighbours, strict=True)]
    return {
        "plain_images_per_s": statistics.median(plain),
        "lightning_images_per_s": statistics.median(lightning),
        "lightning_over_plain": statistics.median(ratios),
        "lightning_over_plain_min": min(ratios),
        "lightning_over_plain_max": max(ratios),
    }


def main() -> None:
    """Print the figures, one `name=value` per line, last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="densenet169")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=5, help="Lightning runs (plain runs: one more)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    data = InMemory((args.warmup_steps + args.steps + 1) * args.batch_size, args.size)
    figures = interleaved_ratio(
        args.backbone, data, args.batch_size, args.steps, args.precision, args.rounds, warmup=args.warmup_steps
    )
    print(
        f"backbone={args.backbone} size={args.size} batch_size={args.batch_size} steps={args.steps} "
        f"rounds={args.rounds} precision={args.precision} threads={torch.get_num_threads()}"
    )
    for key, value in figures.items():
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
