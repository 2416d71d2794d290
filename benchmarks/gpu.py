"""GPU training throughput: DenseNet-169 and ResNet-50 at 320 px, batch 64, fp32 vs bf16-mixed, channels_last
and torch.compile on and off, with the time of one MURA-sized epoch; and whether the input pipeline (cache +
device-side augmentation on synthetic MURA) keeps up with the model.

python benchmarks/gpu.py [--steps 20] [--backbones densenet169 resnet50] [--no-compile] [--pipeline-images 4000]
Needs a CUDA GPU; without one it says so and measures nothing (`--device cpu` runs the same code on the CPU, to
check the script at tiny sizes).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from mura_lightning.models.module import MURAClassifier

MURA_TRAIN_IMAGES = 36_808
WARMUP_STEPS = 5
COMPILE_WARMUP_STEPS = 15


def classifier(backbone: str, size: int, channels_last: bool, compile_model: bool) -> MURAClassifier:
    return MURAClassifier(
        backbone={"name": backbone, "pretrained": False},
        preprocessing={"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3},
        compile=compile_model,
        channels_last=channels_last,
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_s(
    model: MURAClassifier, images: torch.Tensor, labels: torch.Tensor, steps: int, bf16: bool, warmup: int
) -> float:
    """Images/s of forward + BCE + backward + Adam on device-resident tensors."""
    model = model.to(images.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(images.device)
            started = time.perf_counter()
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(images.device)
    return steps * len(images) / (time.perf_counter() - started)


def pipeline_images_per_s(size: int, batch_size: int, images: int, workers: int, device: torch.device) -> float:
    """Images/s the cached synthetic-MURA loader delivers to the device, augmented and normalised there."""
    from data_pipeline import datamodule  # benchmarks/ is on sys.path when this file runs as a script

    from mura_lightning.synthetic import MIN_STUDIES_PER_PART, generate_synthetic_mura

    with tempfile.TemporaryDirectory() as scratch:
        studies = max(MIN_STUDIES_PER_PART, images // 15 + 1)
        root = generate_synthetic_mura(Path(scratch) / "synthetic", studies_per_part=studies, seed=0)
        module = datamodule(root, size, batch_size, workers, True, Path(scratch) / "cache")
        loader = iter(module.train_dataloader())
        next(loader)
        seen, started = 0, time.perf_counter()
        for batch in loader:
            pixels = batch["image"].to(device, non_blocking=True)
            batch = module.device_transform({**batch, "image": pixels}, train=True)
            seen += len(batch["label"])
        synchronize(device)
        return seen / (time.perf_counter() - started)


def main() -> None:
    """Print the figures, one `name=value` per line, last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backbones", nargs="+", default=["densenet169", "resnet50"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--pipeline-images", type=int, default=4000, help="0 skips the input-pipeline check")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured")
        return
    torch.backends.cudnn.benchmark = True
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    labels = (torch.rand(args.batch_size, device=device) > 0.5).float()
    figures = {}
    compile_options = (False,) if args.no_compile else (False, True)
    for backbone, bf16, channels_last, compile_model in itertools.product(
        args.backbones, (False, True), (False, True), compile_options
    ):
        name = f"{backbone}_{'bf16' if bf16 else 'fp32'}_{'nhwc' if channels_last else 'nchw'}" + (
            "_compiled" if compile_model else ""
        )
        model = classifier(backbone, args.size, channels_last, compile_model)
        warmup = COMPILE_WARMUP_STEPS if compile_model else WARMUP_STEPS
        speed = train_images_per_s(model, images, labels, args.steps, bf16, warmup)
        figures[f"{name}_images_per_s"] = speed
        figures[f"{name}_mura_epoch_s"] = MURA_TRAIN_IMAGES / speed
        del model
        torch.cuda.empty_cache()
    if args.pipeline_images:
        figures["pipeline_cache_gpu_augment_images_per_s"] = pipeline_images_per_s(
            args.size, args.batch_size, args.pipeline_images, args.workers, device
        )
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu)"
    print(f"gpu={card} size={args.size} batch_size={args.batch_size} steps={args.steps}")
    for key, value in figures.items():
        print(f"{key}={value:.1f}")


if __name__ == "__main__":
    main()
