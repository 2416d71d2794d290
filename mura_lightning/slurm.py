"""What a training run does differently inside a SLURM job.

Lightning owns the requeue: on the signal SLURM sends before a job is preempted or hits its time limit (the
launcher's `additional_parameters.signal`, `USR1@<grace seconds>`), its SLURMEnvironment saves
`<run>/hpc_ckpt_N.ckpt` and runs `scontrol requeue`. The requeued job re-runs the same pickled sweep job, so it
lands in the same run folder, and `trainer.fit` resumes from that checkpoint. Each job also records its SLURM job
id and log file in `<run>/slurm.json`, so `summarize` can point at the log of a failed job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, Trainer
from omegaconf import OmegaConf

from mura_lightning.io import write_json_atomic

JOB_FILE = "slurm.json"  # a SLURM job's id and log file, in its run folder
DEFAULT_REQUEUE_SIGNAL = "USR1"
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"
CPU_ACCELERATORS = ("cpu",)
SCONTROL_TIMEOUT_S = 30


def gpus_per_node(accelerator: str, devices: Any) -> Any:
    """The GPUs a SLURM job asks for on each node: the trainer's devices, none when it trains on the CPU."""
    return None if str(accelerator) in CPU_ACCELERATORS else devices


OmegaConf.register_new_resolver("mura.slurm_gpus", gpus_per_node, replace=True)


def requeue_signal() -> signal.Signals:
    """The signal SLURM was asked to send before preempting or ending the job (the launcher's `--signal`)."""
    launcher = HydraConfig.get().get("launcher") if HydraConfig.initialized() else None
    asked = OmegaConf.select(launcher, "additional_parameters.signal", default=None) if launcher else None
    name = str(asked or DEFAULT_REQUEUE_SIGNAL).split("@")[0].removeprefix("B:").removeprefix("SIG")
    return signal.Signals[f"SIG{name}"]


def in_slurm_job() -> bool:
    """Whether this process runs inside a SLURM batch job (not an interactive allocation)."""
    return SLURMEnvironment.detect()


def trainer_options(callbacks: list[Any]) -> dict[str, Any]:
    """The Trainer's `callbacks` argument, and inside a SLURM job its `plugins`: the SLURM environment that
    checkpoints and requeues the job on the requeue signal, plus a callback that removes those checkpoints once
    training has finished."""
    if not in_slurm_job():
        return {"callbacks": callbacks}
    return {
        "callbacks": [*callbacks, RequeueCheckpointCleanup()],
        "plugins": [SLURMEnvironment(auto_requeue=True, requeue_signal=requeue_signal())],
    }


class RequeueCheckpointCleanup(Callback):
    """Deletes the run's `hpc_ckpt_*.ckpt` (written when the job was requeued) once fit has finished: resumed,
    the run keeps only its usual checkpoints."""

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        """Remove the requeue checkpoints of a finished fit (rank 0 only)."""
        if trainer.is_global_zero:
            for path in Path(trainer.default_root_dir).glob(HPC_CHECKPOINT_GLOB):
                path.unlink(missing_ok=True)


def job_log(job_id: str) -> str | None:
    """The file SLURM writes the job's stderr to, as `scontrol show job` reports it (None when it cannot say)."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
    return fields.get("StdErr") or fields.get("StdOut")


def record_job(run_dir: str | Path) -> Path | None:
    """Inside a SLURM job (rank 0), write `<run_dir>/slurm.json`: job id, array job and task, node, log file."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None or os.environ.get("SLURM_PROCID", "0") != "0":
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    name = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else job_id
    record = {
        "job_id": name,
        "node": os.environ.get("SLURMD_NODENAME"),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "log": job_log(job_id),
    }
    return write_json_atomic(Path(run_dir) / JOB_FILE, record)


def recorded_log(run_dir: str | Path) -> str | None:
    """The SLURM log file a run's job recorded in `<run_dir>/slurm.json`; None for runs outside SLURM."""
    try:
        record = json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("log") if isinstance(record, dict) else None
