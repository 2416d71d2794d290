"""What the SLURM tests share: whether the test cluster (tests/slurm/start.sh) answers, and a tiny CPU sweep
submitted to it with one CPU per job."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.runs import tiny_run_overrides

START_CLUSTER = "sudo tests/slurm/start.sh"
SWEEP_TIMEOUT_S = 600


def cluster_answer() -> str | None:
    """Why no SLURM cluster can be used here, or None when `sinfo` answers."""
    try:
        answer = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        return "SLURM is not installed (no sinfo)"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    return None if answer.returncode == 0 else f"sinfo failed: {' '.join(answer.stderr.split())}"


def slurm_sweep_args(root: Path, out: Path, *args: str) -> list[str]:
    """A tiny CPU sweep submitted to SLURM, one CPU per job, into out/outputs/multirun/<date>_<time>/."""
    overrides = [o for o in tiny_run_overrides(root, out) if not o.startswith(("paths.output_dir", "bodypart"))]
    return [
        "-m",
        *overrides,
        f"paths.log_dir={out}/outputs",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
        "callbacks.cam=null",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        *args,
    ]


def sweep_folder(out: Path) -> Path:
    """The one sweep folder under out/outputs/multirun/."""
    (sweep,) = (out / "outputs" / "multirun").iterdir()
    return sweep


def job_folders(sweep: Path) -> list[Path]:
    """The sweep's job folders (those with a .hydra/ folder), sorted."""
    return sorted(path for path in sweep.iterdir() if (path / ".hydra").is_dir())
