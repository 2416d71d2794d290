"""Images/s of the training input pipeline: raw PNGs (decode, resize, flip, rotate, normalise per sample on the
CPU) against the preprocessed cache with device-side augmentation (workers only copy bytes), for one worker
and for all cores, on synthetic MURA at 320 px.

python benchmarks/data_pipeline.py [--root DIR] [--size 320] [--images 1200] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.synthetic import MIN_STUDIES_PER_PART, generate_synthetic_mura

DATA_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "data" / "mura.yaml"
PREPROCESSING_CONFIG = DATA_CONFIG.parents[1] / "preprocessing" / "imagenet.yaml"
STUDIES_PER_IMAGE = 2.5  # synthetic MURA averages 1-4 images a study
BODY_PARTS_COUNT = 7


def data_settings() -> dict:
    """The defaults of conf/data/mura.yaml that do not depend on other config groups."""
    config = OmegaConf.load(DATA_CONFIG)
    return {key: config[key] for key in ("hflip_prob", "rotation_degrees", "val_fraction")}


def datamodule(root: Path, size: int, batch_size: int, workers: int, cached: bool, cache_dir: Path) -> MURADataModule:
    module = MURADataModule(
        root=str(root),
        body_parts="all",
        preprocessing={**OmegaConf.to_container(OmegaConf.load(PREPROCESSING_CONFIG)), "image_size": size},
        batch_size=batch_size,
        num_workers=workers,
        seed=0,
        persistent_workers=False,
        cache=cached,
        cache_dir=str(cache_dir),
        gpu_augment=cached,
        **data_settings(),
    )
    module.prepare_data()
    module.setup()
    return module


def loader_throughput(module: MURADataModule, images: int) -> float:
    """Images/s that the train loader delivers (after its workers start), over about `images` images."""
    loader = module.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    seen, started = 0, time.perf_counter()
    for batch in iterator:
        seen += len(batch["label"])
        if seen >= images:
            break
    return seen / (time.perf_counter() - started)


def device_augment_ms(module: MURADataModule, device: torch.device, repeats: int = 5) -> float:
    """Milliseconds per image of the device-side flip + rotation + normalisation of a cached batch."""
    batch = next(iter(module.train_dataloader()))
    batch = {**batch, "image": batch["image"].to(device)}
    module.device_transform(batch, train=True)
    started = time.perf_counter()
    for _ in range(repeats):
        module.device_transform(batch, train=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / (repeats * len(batch["label"]))


def main() -> None:
    """Print the figures, one `name=value` per line, last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a MURA-v1.1 folder (default: synthetic MURA in a temp dir)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--images", type=int, default=1200, help="images timed per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root = args.root
        if root is None:
            studies = max(MIN_STUDIES_PER_PART, int(args.images * 1.5 / STUDIES_PER_IMAGE / BODY_PARTS_COUNT) + 1)
            root = generate_synthetic_mura(scratch / "synthetic", studies_per_part=studies, seed=0)
        figures = {}
        for workers in sorted({1, cores}):
            for name, cached in (("raw", False), ("cache", True)):
                module = datamodule(root, args.size, args.batch_size, workers, cached, scratch / "cache")
                figures[f"{name}_images_per_s_{workers}_workers"] = loader_throughput(module, args.images)
            ratio = figures[f"cache_images_per_s_{workers}_workers"] / figures[f"raw_images_per_s_{workers}_workers"]
            figures[f"cache_over_raw_{workers}_workers"] = ratio
        figures["raw_cpu_ms_per_image"] = 1000 / figures["raw_images_per_s_1_workers"]
        figures["cache_cpu_ms_per_image"] = 1000 / figures["cache_images_per_s_1_workers"]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module = datamodule(root, args.size, args.batch_size, 0, True, scratch / "cache")
        augment_ms = device_augment_ms(module, device)
        figures[f"device_augment_ms_per_image_{device.type}"] = augment_ms
        if device.type == "cpu":
            figures["cache_with_cpu_augment_ms_per_image"] = figures["cache_cpu_ms_per_image"] + augment_ms
    print(f"size={args.size} batch_size={args.batch_size} cores={cores} torch_threads={torch.get_num_threads()}")
    for key, value in figures.items():
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
