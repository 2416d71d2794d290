"""Training images/s with study batches (a study pooling: whole studies packed up to the batch size) against image
batches (pooling=mean_prob): same backbone, image size, batch size, data pipeline and machine.

python benchmarks/study_batches.py [--root data/synthetic-MURA/MURA-v1.1] [--backbone densenet169] [--size 128]
    [--batch-size 32] [--steps 10] [--warmup-steps 2] [--rounds 3] [--pooling attention] [--precision bf16-mixed]

Both train a MURAClassifier through the Lightning Trainer on the MURADataModule of `--root` (image cache and device
augmentation on, as in experiment=demo), counting the images of the timed steps (study batches may hold fewer
than `--batch-size`: whole studies rarely fill a batch exactly, and that is part of the cost measured). The runs
alternate, image batches first and last (I S I S ... I), and each study run is compared with the mean of the image
runs on either side of it, so drift of a shared machine's speed cancels to first order; the ratio printed is the
median of those per-run ratios, with their min and max.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from train_step import timing_trainer  # benchmarks/ is on sys.path for a script

from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.models.losses import BCELoss
from mura_lightning.models.module import MURAClassifier

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ImageClock(Callback):
    """Counts the images of the training steps after the warm-up ones and the time they took."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.images = 0
        self.started = self.finished = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch["image"])
            self.finished = time.perf_counter()


def images_per_second(args: argparse.Namespace, pooling: str, cache_dir: str) -> float:
    """Training images/s of one run with `pooling` (its batches: image or study batches, as the model says)."""
    torch.manual_seed(0)
    preprocessing = {"image_size": args.size, "mean": MEAN, "std": STD}
    model = MURAClassifier(
        backbone={"name": args.backbone, "pretrained": False},
        preprocessing=preprocessing,
        pooling={"name": pooling},
        loss=BCELoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
    )
    datamodule = MURADataModule(
        root=args.root,
        body_parts="all",
        preprocessing=preprocessing,
        batch_size=args.batch_size,
        num_workers=args.workers,
        val_fraction=0.1,
        seed=0,
        hflip_prob=0.5,
        rotation_degrees=30,
        cache=True,
        cache_dir=cache_dir,
        gpu_augment=True,
        study_batches=model.pools_studies,
    )
    clock = ImageClock(args.warmup_steps)
    trainer = timing_trainer("cpu", args.precision, args.warmup_steps + args.steps, clock)
    trainer.fit(model, datamodule=datamodule)
    return clock.images / (clock.finished - clock.started)


def main() -> None:
    """Print the figures, one `name=value` per line, last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic-MURA/MURA-v1.1", help="a MURA-v1.1 tree")
    parser.add_argument("--cache-dir", default=None, help="the image cache (default: a temporary folder)")
    parser.add_argument("--backbone", default="densenet169")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="study-batch runs (image-batch runs: one more)")
    parser.add_argument("--pooling", default="attention", help="the study pooling of the study-batch runs")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", default="bf16-mixed", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    if not Path(args.root).is_dir():
        raise SystemExit(f"--root={args.root} is not a folder: run `make demo` (or pass a MURA-v1.1 tree)")
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or scratch
        images = [images_per_second(args, "mean_prob", cache_dir)]
        studies = []
        for _ in range(args.rounds):
            studies.append(images_per_second(args, args.pooling, cache_dir))
            images.append(images_per_second(args, "mean_prob", cache_dir))
    neighbours = [(before + after) / 2 for before, after in zip(images, images[1:], strict=False)]
    ratios = [speed / reference for speed, reference in zip(studies, neighbours, strict=True)]
    print(
        f"backbone={args.backbone} size={args.size} batch_size={args.batch_size} steps={args.steps} "
        f"rounds={args.rounds} pooling={args.pooling} precision={args.precision} threads={torch.get_num_threads()}"
    )
    figures = {
        "image_batches_images_per_s": statistics.median(images),
        "study_batches_images_per_s": statistics.median(studies),
        "study_over_image_batches": statistics.median(ratios),
        "study_over_image_batches_min": min(ratios),
        "study_over_image_batches_max": max(ratios),
    }
    for key, value in figures.items():
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
