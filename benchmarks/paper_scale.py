"""A paper-scale rehearsal (issue 20): a synthetic MURA the size of MURA-v1.1 written, indexed and cached at the
paper's 320 px through the project's datamodule, then one epoch of `experiment=paper` trained end to end through
the train entry (its Lightning Trainer, image cache, device augmentation and validation), and that epoch's
training images/s against benchmarks/gpu.py's model-only figure for the same variant.

python benchmarks/paper_scale.py [--work outputs/paper_scale] [--stages generate,index,cache,epoch]
    [--device cuda] [--studies-per-part N] [--generate-workers N] [--model-results gpu_results.json]
    [--results FILE] [OVERRIDE ...]

Stages, each timed (default: the first three, and epoch too when --device is given):
  generate  the tree in WORK/data/MURA-v1.1, by `python -m mura_lightning.synthetic`: studies per body part and
            the valid share chosen so that its image counts come close to MURA's (36,808 training, 3,197 valid:
            the test set here); a tree already there is reused when it was generated with the same settings (and
            refused when not)
  index     the datamodule's setup over all body parts with the cache off: index, patient split, datasets
  cache     the datamodule's prepare_data with data.cache=true: every image decoded and resized once into
            WORK/cache (a cache already built for these files and this size is reused)
  epoch     one epoch (trainer.max_epochs=1, test=false) of `experiment=paper` on --device, through
            mura_lightning.train.train, timed by a callback; before it, gpu.py's model-only training images/s of
            the same backbone, precision, layout, compile mode, optimizer and batch (its figure from
            --model-results, a gpu_results.json, when that has it). The epoch's images/s count the training
            batches after the first (the first waits for the loader's workers, once per fit) up to the last.
OVERRIDE: train config overrides for every stage (key=value), after the rehearsal's own (experiment=paper, the
tree, the cache, model.backbone.pretrained=false): e.g. data.batch_size=64 trainer.precision=bf16-mixed, or
model.preprocessing.image_size=32 for a small check.

Prints the tree's counts against MURA's and each stage's figures as name=value lines when it ends (--results
appends each as a JSON line, as gpu.py does, so a run cut short keeps what it measured): the stage's seconds, the
tree's counts, the sizes on disk of the tree and of the cache, and for the epoch `epoch_over_model/<backbone>`
with the figures behind it and `paper_training_h/<backbone>`, experiment=paper's whole training (its
max_epochs of this epoch's training and validation) extrapolated. Memory: `peak_pss_mib/<stage>` for the set-up
stages, the peak of the proportional set sizes of this process and its worker processes added up during the
stage, sampled every 0.5 s (a page shared by several processes counts once in all; resident set sizes added up
would count the copy-on-write pages of forked loader workers once per worker, many GB too much); not sampled
during the epoch, whose speed it could disturb (reading a process's page tables takes its memory-map lock), which
gives `peak_gpu_memory_gib/<backbone>` on CUDA instead; and last `peak_rss_mib/self`, this process's own peak
resident set over the whole run. (getrusage's peak of the child processes would say little: importing torch
starts a child process of about 430 MB.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from gpu import WARMUP_STEPS, Figures, Variant, train_images_per_s  # benchmarks/ is on sys.path for a script
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf, open_dict
from train_step import synchronize

from mura_lightning.cli import CONFIG_DIR, VERSION_BASE
from mura_lightning.config import instantiate
from mura_lightning.data.cache import MANIFEST_FILE, cache_key
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.synthetic import MIN_STUDIES_PER_PART, load_spec
from mura_lightning.synthetic.plan import DATASET_DIR
from mura_lightning.synthetic.record import check_reused_tree

MURA_IMAGES = {"train": 36_808, "valid": 3_197}  # MURA-v1.1 (Rajpurkar et al., 2017)
MURA_STUDIES = {"train": 13_457, "valid": 1_199}
STAGES = ("generate", "index", "cache", "epoch")
SEED = 0
MODEL_BATCH_SIZE = 64  # gpu.py's --batch-size default: its variant names leave that batch out
MODEL_STEPS = 20  # gpu.py's --steps default
PRECISIONS = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16"}  # trainer.precision -> gpu.py's name
COMPILE_MODES = {"default": "compile", "max-autotune": "max-autotune"}  # model.compile_mode -> gpu.py's option
TRAINERS = {"cuda": "gpu", "cpu": "cpu"}
MIB = 2**20


def generator_settings(studies_per_part: int | None, workers: int | None) -> dict:
    """The generator's settings for a MURA-sized tree: as many studies per body part as MURA's images need at
    the generator's mean images per study, and MURA's valid share of the images."""
    total = sum(MURA_IMAGES.values())
    if studies_per_part is None:
        low, high = load_spec(root=".", studies_per_part=MIN_STUDIES_PER_PART, seed=SEED).images_per_study
        studies_per_part = round(total / ((low + high) / 2) / len(BODY_PARTS))
    return {
        "studies_per_part": studies_per_part,
        "seed": SEED,
        "valid_fraction": round(MURA_IMAGES["valid"] / total, 4),
        "num_workers": workers,
    }


def generate(data: Path, settings: dict) -> bool:
    """Write the tree under `data` with the generator's command, as a user does (its worker processes then
    import what the generator needs, not what this script does), or check that the tree there was generated with
    `settings`; True when written."""
    tree = data / DATASET_DIR
    if tree.exists():
        check_reused_tree(tree, load_spec(root=str(data), **settings))
        print(f"reusing the tree at {tree} (generated with the same settings)", flush=True)
        return False
    knobs = [f"{name}={value}" for name, value in settings.items() if value is not None]
    subprocess.run([sys.executable, "-m", "mura_lightning.synthetic", f"root={data}", *knobs], check=True)
    return True


def tree_counts(tree: Path) -> dict[str, int]:
    """Images and studies per split, from the tree's official CSVs."""
    counts = {}
    for split in MURA_IMAGES:
        for kind, csv in (("images", f"{split}_image_paths.csv"), ("studies", f"{split}_labeled_studies.csv")):
            counts[f"{split}_{kind}"] = len((tree / csv).read_text().splitlines())
    return counts


def print_counts(counts: dict[str, int]) -> None:
    """Each count beside MURA-v1.1's."""
    for split in MURA_IMAGES:
        for kind, mura in (("images", MURA_IMAGES[split]), ("studies", MURA_STUDIES[split])):
            value = counts[f"{split}_{kind}"]
            print(f"{split} {kind}: {value:,} (MURA {mura:,}, {value / mura - 1:+.2%})")


def disk_mib(folder: Path) -> float:
    """The space the files under `folder` take on disk (allocated blocks), in MiB."""
    blocks = sum(entry.stat().st_blocks for entry in folder.rglob("*") if entry.is_file())
    return blocks * 512 / MIB


def descendants(pid: int) -> list[int]:
    """The process ids of `pid`'s children, theirs, and so on (Linux /proc; those that end meanwhile are left
    out)."""
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def pss_kib(pid: int) -> int:
    """The proportional set size of a process, in KiB: its resident pages, each it shares divided by the number of
    processes sharing it (so forked workers' copy-on-write pages are not counted once per worker); 0 for one that
    has ended."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


class MemoryPeak:
    """Samples, in a thread while the block runs, the summed proportional set sizes of this process and all its
    descendants (the generator's, the cache's and the loader's worker processes), keeping the peak, in MiB."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        while True:
            total = sum(pss_kib(process) for process in [pid, *descendants(pid)])
            self.peak_mib = max(self.peak_mib, total / 1024)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    """The train config with `overrides`, writing into `run_dir`, as the Hydra app composes it (HydraConfig set,
    the `hydra` node left out of the returned config)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def datamodule(cfg: DictConfig, cache: bool):
    """The configured datamodule, handed the model's preprocessing as train does, with the cache on or off."""
    preprocessing = OmegaConf.to_container(cfg.model.preprocessing, resolve=True)
    return instantiate(cfg.data, preprocessing=preprocessing, cache=cache, _convert_="all")


def index(cfg: DictConfig) -> dict[str, int]:
    """Index, split and build the datasets with the cache off; the images per subset."""
    module = datamodule(cfg, cache=False)
    module.setup()
    return {subset: len(dataset) for subset, dataset in module.datasets.items()}


def build_cache(cfg: DictConfig) -> tuple[Path, bool, float]:
    """The datamodule's prepare_data with the cache on: the cache's folder, whether it was built (not reused), and
    the seconds prepare_data took."""
    cache_dir = Path(cfg.data.cache_dir)
    before = {path.parent for path in cache_dir.glob(f"*/{MANIFEST_FILE}")}
    module = datamodule(cfg, cache=True)
    started = time.perf_counter()
    module.prepare_data()
    seconds = time.perf_counter() - started
    module.setup()
    folder = cache_dir / cache_key(module.image_table()["path"].tolist(), module.preprocessing.image_size)
    return folder, folder not in before, seconds


def model_variant(cfg: DictConfig) -> Variant:
    """gpu.py's variant of the configured training: backbone, precision, layout, compile mode, fused Adam, cuDNN
    autotuning and batch size."""
    precision = PRECISIONS.get(str(cfg.trainer.precision))
    if precision is None:
        raise SystemExit(f"trainer.precision={cfg.trainer.precision}: gpu.py measures {', '.join(PRECISIONS)} only")
    compile_mode = None
    if cfg.model.compile:
        compile_mode = COMPILE_MODES.get(cfg.model.compile_mode)
        if compile_mode is None:
            raise SystemExit(f"model.compile_mode={cfg.model.compile_mode}: gpu.py measures {', '.join(COMPILE_MODES)}")
    batch_size = cfg.data.batch_size
    return Variant(
        backbone=cfg.model.backbone.name,
        precision=precision,
        layout="nhwc" if cfg.model.channels_last else "nchw",
        compile_mode=compile_mode,
        fused=bool(cfg.optimizer.get("fused")),
        cudnn_benchmark=bool(cfg.trainer.get("benchmark")),
        batch_size=None if batch_size == MODEL_BATCH_SIZE else batch_size,
    )


def model_images_per_s(cfg: DictConfig, variant: Variant, args: argparse.Namespace, device: torch.device) -> float:
    """The variant's model-only training images/s: from --model-results when it holds the figure, else measured
    here as gpu.py measures it."""
    name = f"train_images_per_s/{variant.name}"
    if args.model_results is not None:
        figures = json.loads(args.model_results.read_text()).get("figures", {})
        if name in figures:
            print(f"model-only figure {name} from {args.model_results}", flush=True)
            return float(figures[name])
        print(f"{args.model_results} has no {name}: measuring it here", flush=True)
    timing = train_images_per_s(
        variant,
        cfg.model.preprocessing.image_size,
        cfg.data.batch_size,
        args.model_steps,
        args.model_warmup_steps,
        device,
        cfg.model.compile_timeout_s,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if timing.images_per_s is None:
        raise SystemExit(f"{variant.name}: the compile fell back to eager ({timing.fallback}); no model-only figure")
    return timing.images_per_s


class EpochClock(Callback):
    """Times the phases of a fit's epochs: the first training batch (the loader's workers start), the training
    batches after it (their images counted), the validation loops (not the sanity check), and the fit."""

    def __init__(self) -> None:
        self.images = 0
        self.fit_s = self.first_batch_s = self.train_s = self.steady_s = self.validation_s = 0.0
        self._fit = self._epoch = self._first_done = self._validation = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            synchronize(pl_module.device)
            self._first_done = time.perf_counter()
            self.first_batch_s += self._first_done - self._epoch
            return
        self.images += len(batch["label"])
        if batch_idx + 1 == trainer.num_training_batches:
            synchronize(pl_module.device)
            finished = time.perf_counter()
            self.steady_s += finished - self._first_done
            self.train_s += finished - self._epoch

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validation_s += time.perf_counter() - self._validation

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_s = time.perf_counter() - self._fit


def epoch(cfg: DictConfig, args: argparse.Namespace, run_dir: Path, figure: Figures) -> None:
    """The model-only figure, then one epoch of the configured training; their figures."""
    from mura_lightning.train import train

    device = torch.device(args.device)
    variant = model_variant(cfg)
    backbone = variant.backbone
    print(f"epoch of {variant.name} at {cfg.model.preprocessing.image_size} px on {args.device}", flush=True)
    model_speed = model_images_per_s(cfg, variant, args, device)
    figure(f"model_images_per_s/{variant.name}", model_speed)
    planned_epochs = cfg.trainer.max_epochs
    cfg.trainer.max_epochs = 1
    shutil.rmtree(run_dir, ignore_errors=True)
    clock = EpochClock()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train(cfg, extra_callbacks=[clock])
    if device.type == "cuda":
        figure(f"peak_gpu_memory_gib/{backbone}", torch.cuda.max_memory_allocated(device) / 2**30)
    if clock.images == 0:
        raise SystemExit("the epoch had a single training batch: nothing to time after it; use a smaller batch")
    speed = clock.images / clock.steady_s
    figure(f"epoch_images_per_s/{backbone}", speed)
    figure(f"epoch_over_model/{backbone}", speed / model_speed)
    figure(f"epoch_train_images/{backbone}", float(clock.images))
    figure(f"epoch_first_batch_s/{backbone}", clock.first_batch_s)
    figure(f"epoch_train_s/{backbone}", clock.train_s)
    figure(f"epoch_validation_s/{backbone}", clock.validation_s)
    figure(f"epoch_fit_s/{backbone}", clock.fit_s)
    figure(f"paper_training_h/{backbone}", planned_epochs * (clock.train_s + clock.validation_s) / 3600)


def stage_list(text: str | None, device: str | None) -> list[str]:
    """The stages asked for (default: all, the epoch only with a device), checked."""
    if text is None:
        return list(STAGES if device else STAGES[:-1])
    stages = text.split(",")
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown stage {unknown[0]!r}; the stages are {','.join(STAGES)}")
    if "epoch" in stages and device is None:
        raise SystemExit("the epoch stage needs --device cuda (or --device cpu, to check the script at a small size)")
    return stages


def main() -> None:
    """Run the stages asked for, printing their figures; a user error ends it with its message."""
    try:
        run(parse_arguments())
    except MuraError as err:
        raise SystemExit(f"error: {err}") from None


def parse_arguments() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/paper_scale"), help="tree, cache and run here")
    parser.add_argument("--stages", help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--device", choices=sorted(TRAINERS), help="the epoch's device (trainer=gpu or cpu)")
    parser.add_argument("--studies-per-part", type=int, help="default: as many as MURA's image counts need")
    parser.add_argument("--generate-workers", type=int, help="the generator's processes (default: one per CPU)")
    parser.add_argument("--model-results", type=Path, help="a gpu_results.json holding the model-only figure")
    parser.add_argument("--model-steps", type=int, default=MODEL_STEPS, help="timed steps of the model-only figure")
    parser.add_argument("--model-warmup-steps", type=int, default=WARMUP_STEPS)
    parser.add_argument("--results", type=Path, help="append each figure to this JSON-lines file")
    parser.add_argument("overrides", nargs="*", help="train config overrides (key=value)")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    """The stages `args` ask for, in order, each printing its figures when it ends."""
    stages = stage_list(args.stages, args.device)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.work.expanduser().absolute()
    data, cache_dir, run_dir = work / "data", work / "cache", work / "run"
    tree = data / DATASET_DIR
    overrides = [
        "experiment=paper",
        f"data.root={tree}",
        "data.cache=true",
        f"data.cache_dir={cache_dir}",
        "data.gpu_augment=true",
        "model.backbone.pretrained=false",  # no ImageNet weights needed: the speed is the same
        f"paths.root_dir={work}",
        *([f"trainer={TRAINERS[args.device]}"] if args.device else []),
        "test=false",
        *args.overrides,
    ]
    cfg = compose_train(overrides, run_dir)
    figure = Figures(args.results)
    if "generate" in stages:
        settings = generator_settings(args.studies_per_part, args.generate_workers)
        print(f"generating: {settings}", flush=True)
        with MemoryPeak() as memory:
            started = time.perf_counter()
            written = generate(data, settings)
        if written:
            figure("generate_s", time.perf_counter() - started)
            figure("peak_pss_mib/generate", memory.peak_mib)
    if not (tree / "train_image_paths.csv").is_file():
        raise SystemExit(f"no synthetic MURA at {tree}: run the generate stage first")
    counts = tree_counts(tree)
    print_counts(counts)
    for name, value in counts.items():
        figure(f"tree_{name}", value)
    figure("tree_disk_mib", disk_mib(data))
    if "index" in stages:
        with MemoryPeak() as memory:
            started = time.perf_counter()
            subsets = index(cfg)
        figure("index_s", time.perf_counter() - started)
        figure("peak_pss_mib/index", memory.peak_mib)
        print("subsets: " + ", ".join(f"{name} {count:,} images" for name, count in subsets.items()), flush=True)
    if "cache" in stages:
        with MemoryPeak() as memory:
            folder, built, seconds = build_cache(cfg)
        print(f"{'built' if built else 'reused'} the cache at {folder}", flush=True)
        if built:
            figure("cache_s", seconds)
            figure("peak_pss_mib/cache", memory.peak_mib)
        figure("cache_disk_mib", disk_mib(folder))
    if "epoch" in stages:
        epoch(cfg, args, run_dir, figure)
    figure("peak_rss_mib/self", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


if __name__ == "__main__":
    main()
