"""What a training run does differently inside a SLURM job.

On the signal SLURM sends before a job is preempted or hits its time limit (the launcher's
`additional_parameters.signal`, `USR1@<grace seconds>`), the SlurmRequeue callback saves `<run>/hpc_ckpt_N.ckpt`
and runs `scontrol requeue`; submitit's own requeue stays off. The requeued job re-runs the same pickled sweep
job, so it lands in the same run folder, and `trainer.fit` resumes from that checkpoint (Lightning looks for
`hpc_ckpt_*.ckpt` under SLURM). Each job also records its SLURM job id and log file in `<run>/slurm.json`, so
`summarize` can point at the log of a failed job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, Trainer
from omegaconf import OmegaConf

from mura_lightning.cluster.slurm_env import slurm_job_id
from mura_lightning.errors import MuraError
from mura_lightning.io import write_json_atomic

log = logging.getLogger(__name__)

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
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise MuraError(
            f"hydra.launcher.additional_parameters.signal={asked} names no signal; use e.g. USR1@120 (the signal, "
            "then the seconds before SLURM stops the job)"
        ) from None


def in_slurm_job() -> bool:
    """Whether this process runs inside a SLURM batch job (not an interactive allocation)."""
    return SLURMEnvironment.detect()


def trainer_options(callbacks: list[Any]) -> dict[str, Any]:
    """The Trainer's `callbacks` argument, and inside a SLURM job its `plugins`: a SLURM environment without
    Lightning's own requeue handler, and the SlurmRequeue callback that does the requeue instead."""
    if not in_slurm_job():
        return {"callbacks": callbacks}
    return {
        "callbacks": [*callbacks, SlurmRequeue(requeue_signal(), slurm_job_id())],
        "plugins": [SLURMEnvironment(auto_requeue=False)],
    }


def hpc_checkpoint_path(run_dir: str | Path) -> Path:
    """The next `hpc_ckpt_N.ckpt` in the run folder, where Lightning looks for one to resume from under SLURM."""
    numbers = [int(path.stem.rsplit("_", 1)[-1]) for path in Path(run_dir).glob(HPC_CHECKPOINT_GLOB)]
    return Path(run_dir) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class JobRequeued(SystemExit):
    """Ends the process after the job was checkpointed and requeued (a SystemExit, so no error.txt is written
    and submitit records no result: the requeued job will)."""


class SlurmRequeue(Callback):
    """Checkpoint and requeue the SLURM job when SLURM sends the requeue signal (before a preemption or the time
    limit); remove those checkpoints once fit has finished.

    The signal handler only notes the signal; the work happens at the next batch end, where rank 0's decision is
    broadcast so all ranks stop at the same batch. (Lightning's own handler saves and flushes the loggers inside
    the signal handler, which deadlocks when the signal lands during a TensorBoard flush.)"""

    def __init__(self, signum: signal.Signals, job_id: str) -> None:
        self.signum = signum
        self.job_id = job_id
        self.requested = False

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Listen for the requeue signal (Lightning keeps this handler and restores it after each stage)."""
        signal.signal(self.signum, self._note_signal)

    def _note_signal(self, signum: int, frame: Any) -> None:
        log.info("received %s: checkpointing and requeueing at the next batch", signal.Signals(signum).name)
        self.requested = True

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """Requeue here when the signal came."""
        self._requeue_if_signalled(trainer)

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """Requeue here when the signal came."""
        self._requeue_if_signalled(trainer)

    def on_test_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """Requeue here when the signal came."""
        self._requeue_if_signalled(trainer)

    def _requeue_if_signalled(self, trainer: Trainer) -> None:
        if not trainer.strategy.broadcast(self.requested):
            return
        self.requested = False
        path = hpc_checkpoint_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        requeued = trainer.is_global_zero and self._requeue(path)
        if trainer.strategy.broadcast(requeued):
            raise JobRequeued(0)

    def _requeue(self, checkpoint: Path) -> bool:
        command = ["scontrol", "requeue", self.job_id]
        try:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as err:
            answer = subprocess.CompletedProcess(command, 1, "", str(err))
        if answer.returncode != 0:
            log.warning("could not requeue SLURM job %s, training on: %s", self.job_id, answer.stderr.strip())
            return False
        log.info("requeued SLURM job %s; it resumes from %s", self.job_id, checkpoint)
        return True

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        """Remove the requeue checkpoints of a finished fit (rank 0): the run keeps only its usual checkpoints."""
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
    record = {
        "job_id": slurm_job_id(),
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
