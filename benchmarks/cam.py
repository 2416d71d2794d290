"""Seconds per CAM call: GradCAM of 16 images at 320 px for each backbone, on this machine's CPU (or GPU).

python benchmarks/cam.py [--images 16] [--size 320] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from mura_lightning.inference.explain import compute_cams
from mura_lightning.models.backbones import build_backbone

CAM_LAYERS = {"densenet169": "features.norm5", "resnet50": "layer4.2"}


def main() -> None:
    """Print `cam_seconds_<backbone>=...` lines: the median of a few calls after a warm-up call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="GradCAM")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = torch.randn(args.images, 3, args.size, args.size)
    figures = {}
    for name, layer in CAM_LAYERS.items():
        net = build_backbone(name, pretrained=False, in_chans=3).to(device)
        compute_cams(net, net.get_submodule(layer), inputs, args.method)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            compute_cams(net, net.get_submodule(layer), inputs, args.method)
            times.append(time.perf_counter() - started)
        figures[f"cam_seconds_{name}"] = sorted(times)[len(times) // 2]
    print(
        f"device={device} images={args.images} size={args.size} method={args.method} threads={torch.get_num_threads()}"
    )
    for key, value in figures.items():
        print(f"{key}={value:.2f}")


if __name__ == "__main__":
    main()
