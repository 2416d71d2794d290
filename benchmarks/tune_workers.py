"""Wall time of one Optuna search run by one worker and by two (hparams_search.n_workers=2), each worker given one
core, on the same synthetic data and trial settings.

python benchmarks/tune_workers.py [--out /tmp/tune_workers] [--trials 6] [--studies-per-part 30] [--size 64]
    [--epochs 3] [--batch-size 16]

Generates synthetic MURA once (not timed), then times `python -m mura_lightning.tune` twice, each a new study in
a folder of its own: one worker in the search's own process pinned to the first core (one torch thread), then two
local worker processes, each taking cores // 2 of this machine (one core and one torch thread on 2 cores; the
search process itself only waits). DenseNet-169 from scratch, data workers 0, no test pass or Grad-CAM. The two
searches draw different values (each worker its own sampler seed), so the median pruner stops different trials:
the counts are printed with the times. Prints name=value lines, and the load average before and after (the
machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"trials: (\d+) complete, (\d+) pruned, (\d+) failed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune_workers"), help="data and studies go here")
    parser.add_argument("--trials", type=int, default=6, help="hparams_search.n_trials")
    parser.add_argument("--studies-per-part", type=int, default=30, help="synthetic studies per body part")
    parser.add_argument("--size", type=int, default=64, help="image size")
    parser.add_argument("--epochs", type=int, default=3, help="trainer.max_epochs of each trial")
    parser.add_argument("--batch-size", type=int, default=16, help="data.batch_size (not searched here)")
    return parser.parse_args()


def generate(args: argparse.Namespace) -> Path:
    """Synthetic MURA under --out/data (kept when it is there); its MURA-v1.1 folder."""
    root = args.out / "data"
    if not (root / "MURA-v1.1").is_dir():
        command = [
            sys.executable, "-m", "mura_lightning.synthetic", f"root={root}",
            f"studies_per_part={args.studies_per_part}", "seed=0",
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    return root / "MURA-v1.1"


def search_overrides(args: argparse.Namespace, data_root: Path, folder: Path) -> list[str]:
    """The search's train and search settings, writing into `folder`."""
    return [
        f"data.root={data_root}",
        f"paths.root_dir={folder}",
        "bodypart=all",
        "model=densenet169",
        "model.backbone.pretrained=false",
        f"model.preprocessing.image_size={args.size}",
        "trainer=cpu",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "callbacks.cam=null",
        "callbacks.metrics_report=null",
        "test=false",
        "data.num_workers=0",
        f"data.batch_size={args.batch_size}",
        "~hparams_search.params.batch_size",
        f"hparams_search.n_trials={args.trials}",
    ]


def timed_search(overrides: list[str], env: dict[str, str], pin_to: set[int] | None) -> tuple[float, tuple[int, ...]]:
    """Wall seconds of one tune command and its trial counts (complete, pruned, failed)."""
    command = [sys.executable, "-m", "mura_lightning.tune", *overrides]
    started = time.perf_counter()
    finished = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, pin_to)) if pin_to else None,
    )
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"the search failed:\n{finished.stderr[-3000:]}")
    counts = COUNTS.search(finished.stdout)
    return seconds, tuple(int(value) for value in counts.groups())


def main() -> None:
    args = parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit(f"two workers with a core each need 2 cores; this process may use {len(cores)}")
    data_root = generate(args)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    load_before = os.getloadavg()
    one_s, one = timed_search(
        search_overrides(args, data_root, args.out / "one_worker"), {**env, "OMP_NUM_THREADS": "1"}, {cores[0]}
    )
    two_s, two = timed_search(
        [*search_overrides(args, data_root, args.out / "two_workers"), "hparams_search.n_workers=2"], env, None
    )
    load_after = os.getloadavg()
    print(f"cores={len(cores)}")
    print(f"trials={args.trials}")
    print(f"one_worker_s={one_s:.1f}")
    print(f"two_workers_s={two_s:.1f}")
    print(f"speedup={one_s / two_s:.2f}")
    for name, (complete, pruned, failed) in (("one_worker", one), ("two_workers", two)):
        print(f"{name}_complete={complete}")
        print(f"{name}_pruned={pruned}")
        print(f"{name}_failed={failed}")
    print(f"load_before={load_before[0]:.2f},{load_before[1]:.2f},{load_before[2]:.2f}")
    print(f"load_after={load_after[0]:.2f},{load_after[1]:.2f},{load_after[2]:.2f}")


if __name__ == "__main__":
    main()
