"""GPU training throughput: DenseNet-169 and ResNet-50 at 320 px, batch 64, for fp32 / bf16-mixed x NCHW /
channels_last x eager / torch.compile and the speed levers; the images/s the cached synthetic-MURA loader
delivers with 8 and 16 workers; and the Lightning / plain-PyTorch ratio on the GPU.

python benchmarks/gpu.py [--variants eager compiled levers max-autotune SPEC ...] [--backbones ...]
                         [--workers 8 16] [--pipeline-root DIR] [--ratio-rounds 3] [--results FILE]

A variant SPEC is `backbone/precision/layout[/option...]`: precision fp32 or bf16, layout nchw or nhwc
(channels_last), options `compile` (torch.compile, default mode), `max-autotune` (torch.compile in that mode),
`fused` (Adam(fused=True)), `nobench` (cudnn.benchmark off; on otherwise), `batch=N`. The group names expand
over --backbones: `eager` and `compiled` (fp32/bf16 x nchw/nhwc), `levers` (bf16 nhwc: nobench, fused, twice
the batch), `max-autotune` (bf16 nhwc). Each figure is printed as `name=value` and, with --results, appended
to that JSON-lines file as soon as it is measured, so a run cut short keeps what it measured. Compiled variants
compile through the model's own option (`model.compile`, `model.compile_mode`): their first training step is
timed apart (`compile_s/...`: that step less a timed step's time) from the throughput after warm-up; a compile that
fails or outlasts --compile-timeout-s falls back to eager, is recorded as `compile_failed/...` and gives no
throughput. TORCHINDUCTOR_CACHE_DIR (gpu_check.sh sets it) keeps inductor's caches between runs.
Needs a CUDA GPU; `--device cpu` runs the same code on the CPU, to check the script at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from train_step import InMemory, interleaved_ratio, synchronize  # benchmarks/ is on sys.path for a script

from mura_lightning.models.module import MURAClassifier

MURA_TRAIN_IMAGES = 36_808
WARMUP_STEPS = 5
COMPILE_WARMUP_FACTOR = 3  # compiled variants warm up this many times longer (the first steps compile)
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("nchw", "nhwc")
COMPILE_MODES = ("compile", "max-autotune")
FLAGS = ("fused", "nobench")
GROUPS = ("eager", "compiled", "levers", "max-autotune")


@dataclass(frozen=True)
class Variant:
    """One training configuration to time."""

    backbone: str
    precision: str
    layout: str
    compile_mode: str | None = None
    fused: bool = False
    cudnn_benchmark: bool = True
    batch_size: int | None = None  # None: --batch-size

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """The variant of a `backbone/precision/layout[/option...]` spec (see the module docstring)."""
        parts = spec.split("/")
        if len(parts) < 3 or parts[1] not in PRECISIONS or parts[2] not in LAYOUTS:
            raise ValueError(
                f"variant {spec!r} is not backbone/precision/layout[/option...] with precision in "
                f"{PRECISIONS} and layout in {LAYOUTS}, e.g. densenet169/bf16/nhwc/compile"
            )
        variant = cls(parts[0], parts[1], parts[2])
        for option in parts[3:]:
            if option in COMPILE_MODES:
                variant = replace(variant, compile_mode=option)
            elif option == "fused":
                variant = replace(variant, fused=True)
            elif option == "nobench":
                variant = replace(variant, cudnn_benchmark=False)
            elif option.startswith("batch=") and option[len("batch=") :].isdigit():
                variant = replace(variant, batch_size=int(option[len("batch=") :]))
            else:
                raise ValueError(
                    f"variant {spec!r}: unknown option {option!r}; use {', '.join(COMPILE_MODES + FLAGS)} or batch=N"
                )
        return variant

    @property
    def name(self) -> str:
        """The spec this variant parses from, options in a fixed order."""
        options = [self.compile_mode] if self.compile_mode else []
        options += ["fused"] if self.fused else []
        options += [] if self.cudnn_benchmark else ["nobench"]
        options += [f"batch={self.batch_size}"] if self.batch_size else []
        return "/".join([self.backbone, self.precision, self.layout, *options])


def expand(items: list[str], backbones: list[str], batch_size: int) -> list[Variant]:
    """The variants of group names and specs, in order, each once. Compiled groups list bf16 channels_last
    first: a run cut short keeps the most telling figures."""
    variants: list[Variant] = []
    for item in items:
        if item in ("eager", "compiled"):
            mode = "compile" if item == "compiled" else None
            combos = [("bf16", "nhwc"), ("bf16", "nchw"), ("fp32", "nhwc"), ("fp32", "nchw")]
            variants += [Variant(b, p, layout, mode) for p, layout in combos for b in backbones]
        elif item == "levers":
            for b in backbones:
                base = Variant(b, "bf16", "nhwc")
                variants += [replace(base, cudnn_benchmark=False), replace(base, fused=True)]
                variants.append(replace(base, batch_size=2 * batch_size))
        elif item == "max-autotune":
            variants += [Variant(b, "bf16", "nhwc", "max-autotune") for b in backbones]
        else:
            variants.append(Variant.parse(item))
    return list(dict.fromkeys(variants))


def classifier(variant: Variant, size: int, compile_timeout_s: float | None) -> MURAClassifier:
    """The classifier of a variant, compiled (in the variant's mode) as `model.compile=true` trains it."""
    return MURAClassifier(
        backbone={"name": variant.backbone, "pretrained": False},
        preprocessing={"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3},
        compile=variant.compile_mode is not None,
        compile_mode="default" if variant.compile_mode in (None, "compile") else variant.compile_mode,
        compile_timeout_s=compile_timeout_s,
        channels_last=variant.layout == "nhwc",
    )


@dataclass(frozen=True)
class Timing:
    """A variant's training speed: images/s after warm-up (None when its compile fell back to eager), the
    seconds of its first step (the compile, for compiled variants), and why a compile fell back."""

    images_per_s: float | None
    first_step_s: float
    fallback: str | None = None
    peak_memory_gib: float | None = None  # on CUDA: the most the variant allocated


def train_images_per_s(
    variant: Variant,
    size: int,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile_timeout_s: float | None = None,
) -> Timing:
    """Forward + BCE + backward + Adam on device-resident tensors: the first step timed alone, then images/s
    over `steps` after `warmup` steps (more for compiled variants)."""
    batch_size = variant.batch_size or batch_size
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = (torch.rand(batch_size, device=device) > 0.5).float()
    model = classifier(variant, size, compile_timeout_s).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=variant.fused or None)
    warmup = max(1, COMPILE_WARMUP_FACTOR * warmup if variant.compile_mode else warmup)
    first_step_s, started = 0.0, time.perf_counter()
    for step in range(warmup + steps):
        if step in (1, warmup):
            synchronize(device)
            if step == 1:
                first_step_s = time.perf_counter() - started
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    fallback = getattr(model._train_forward, "fallback", None)
    speed = None if fallback else steps * batch_size / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Timing(speed, first_step_s, fallback, peak)


def pipeline_images_per_s(
    root: Path, size: int, batch_size: int, images: int, workers: int, device: torch.device, cache_dir: Path
) -> float:
    """Images/s the cached loader delivers to the device, augmented and normalised there, over at least `images`
    images: epochs repeat, and the first batch of each (waiting for the workers to start, which a MURA-sized
    epoch pays once per 36,808 images) is not timed."""
    from data_pipeline import datamodule

    module = datamodule(root, size, batch_size, workers, True, cache_dir)
    seen, elapsed = 0, 0.0
    while seen < images:
        started, epoch_start = None, seen
        for batch in module.train_dataloader():
            if started is None:
                started = time.perf_counter()
                continue
            pixels = batch["image"].to(device, non_blocking=True)
            batch = module.device_transform({**batch, "image": pixels}, train=True)
            seen += len(batch["label"])
            if seen >= images:
                break
        synchronize(device)
        if seen == epoch_start:
            raise SystemExit(f"{root}: the train loader gives fewer than 2 batches of {batch_size}; use more images")
        elapsed += time.perf_counter() - started
    return seen / elapsed


def synthetic_root(scratch: Path, images: int) -> Path:
    """A synthetic MURA of about `images` training images, written under `scratch`."""
    from mura_lightning.synthetic import MIN_STUDIES_PER_PART, generate_synthetic_mura

    studies = max(MIN_STUDIES_PER_PART, images // 15 + 1)
    return generate_synthetic_mura(scratch / "synthetic", studies_per_part=studies, seed=0)


class Figures:
    """Prints each figure as `name=value` and appends it to a JSON-lines file when one is given."""

    def __init__(self, results: Path | None) -> None:
        self.results = results

    def __call__(self, name: str, value: float | str) -> None:
        print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}", flush=True)
        if self.results is not None:
            with self.results.open("a") as file:
                file.write(json.dumps({name: value}) + "\n")


def main() -> None:
    """Measure what the arguments ask for, in order: variants, the loader, the Lightning ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, help="untimed steps before them")
    parser.add_argument("--backbones", nargs="+", default=["densenet169", "resnet50"])
    parser.add_argument("--variants", nargs="*", default=["eager", "compiled"], help="groups or specs (docstring)")
    parser.add_argument("--workers", type=int, nargs="*", default=[8, 16], help="loader workers; none skips it")
    parser.add_argument("--pipeline-root", type=Path, help="a MURA-v1.1 folder (default: synthetic, generated)")
    parser.add_argument("--pipeline-images", type=int, default=4000, help="images timed per worker count")
    parser.add_argument("--ratio-rounds", type=int, default=3, help="Lightning runs against plain ones; 0 skips")
    parser.add_argument("--ratio-variant", default="densenet169/bf16/nhwc", help="precision and layout of it")
    parser.add_argument("--results", type=Path, help="append each figure to this JSON-lines file")
    parser.add_argument("--compile-timeout-s", type=float, default=240.0, help="a longer first compile: eager")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: nothing measured (--device cpu checks the script)")
    variants = expand(args.variants, args.backbones, args.batch_size)
    figure = Figures(args.results)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu)"
    print(f"gpu={card} size={args.size} batch_size={args.batch_size} steps={args.steps}", flush=True)
    for variant in variants:
        timing = train_images_per_s(
            variant, args.size, args.batch_size, args.steps, args.warmup_steps, device, args.compile_timeout_s
        )
        figure(f"first_step_s/{variant.name}", timing.first_step_s)
        if timing.peak_memory_gib is not None:
            figure(f"peak_memory_gib/{variant.name}", timing.peak_memory_gib)
        if timing.fallback:
            print(f"{variant.name}: the compile fell back to eager ({timing.fallback}); no throughput", flush=True)
            figure(f"compile_failed/{variant.name}", 1.0)
        else:
            figure(f"train_images_per_s/{variant.name}", timing.images_per_s)
            figure(f"mura_epoch_s/{variant.name}", MURA_TRAIN_IMAGES / timing.images_per_s)
            if variant.compile_mode:
                steady_step_s = (variant.batch_size or args.batch_size) / timing.images_per_s
                figure(f"compile_s/{variant.name}", max(timing.first_step_s - steady_step_s, 0.0))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = True
    if args.workers:
        with tempfile.TemporaryDirectory() as scratch:
            root = args.pipeline_root or synthetic_root(Path(scratch), args.pipeline_images)
            for workers in args.workers:
                speed = pipeline_images_per_s(
                    root, args.size, args.batch_size, args.pipeline_images, workers, device, Path(scratch) / "cache"
                )
                figure(f"pipeline_images_per_s/{workers}_workers", speed)
    if args.ratio_rounds:
        ratio = Variant.parse(args.ratio_variant)
        data = InMemory((args.warmup_steps + args.steps + 1) * args.batch_size, args.size, device)
        precision = "bf16-mixed" if ratio.precision == "bf16" else "32-true"
        values = interleaved_ratio(
            ratio.backbone,
            data,
            args.batch_size,
            args.steps,
            precision,
            args.ratio_rounds,
            channels_last=ratio.layout == "nhwc",
            warmup=args.warmup_steps,
        )
        for key, value in values.items():
            figure(f"{key}/{ratio.name}", value)


if __name__ == "__main__":
    main()
