"""What SLURM's environment says about this process when `srun` started it as one task of a job step, read
before Hydra starts the job (and without importing Lightning unless SLURM started the process).

A run that `srun` launches across nodes is one process per task, each a Hydra app of its own: the tasks must agree
on the run folder (`step_run_name`) and only rank 0 may write the run's files (`secondary_rank_overrides`). A
`hydra/launcher=slurm` sweep job is the same: its sbatch script runs one task per GPU with `srun`.
"""

from __future__ import annotations

import os

RANK_LOG_SUFFIX = "_ddp_process_"  # a rank's own log, <job name>_ddp_process_<rank>.log, named as Lightning names
# the logs of the DDP processes it starts itself


def srun_task() -> bool:
    """Whether `srun` started this process as a task of a batch job's step (not the batch script itself, not an
    interactive shell on an allocation, which Lightning does not treat as a SLURM launch either)."""
    if "SLURM_STEP_ID" not in os.environ:
        return False
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def srun_rank() -> int:
    """This process's rank among all tasks of its step (SLURM_PROCID): its global rank in DDP; 0 outside one."""
    return int(os.environ.get("SLURM_PROCID", "0")) if srun_task() else 0


def step_run_name(default: str) -> str:
    """The run folder's name: `slurm-<job id>.<step>` for a task `srun` started, the same for every task of the
    step and again for the job SLURM requeues (so it resumes in it); `default` (the date and time) elsewhere."""
    return f"slurm-{slurm_job_id()}.{os.environ['SLURM_STEP_ID']}" if srun_task() else default


def slurm_job_id() -> str:
    """This job's id as scontrol names it: `<array job>_<task>` for a task of a job array."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


def secondary_rank_overrides(job_name: str) -> list[str]:
    """Hydra overrides for a task of rank > 0: no `.hydra/` files and its own log, `<job_name>_ddp_process_<rank>
    .log`, so the run folder's config, checkpoints and results are rank 0's alone. None for rank 0."""
    rank = srun_rank()
    if rank == 0:
        return []
    return ["hydra.output_subdir=null", f"hydra.job.name={job_name}{RANK_LOG_SUFFIX}{rank}"]
