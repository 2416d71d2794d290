"""What `hydra/launcher=slurm` adds to submitit's SLURM launcher (hydra_plugins/mura_slurm_launcher/): a check
that SLURM answers before submitting, a refused submission as one line, and a wait that looks at the queue: a job
that can never start stops the sweep at once, and a job that left the queue without a result is reported failed
while the others run on."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, RESULTS_FILE, write_text_atomic

if TYPE_CHECKING:
    from submitit.core.core import Job
    from submitit.core.utils import FailedJobError

    from mura_lightning.cluster.slurm_queue import JobRequest, QueueWatcher

log = logging.getLogger(__name__)

ReturnT = TypeVar("ReturnT")

SINFO_TIMEOUT_S = 30
START_TEST_CLUSTER = "sudo tests/slurm/start.sh"
RUN_LOCALLY = "hydra/launcher=submitit_local"
RESULT_CHECK_S = 1  # how often the wait looks for the jobs' result files (it asks squeue every poll_s at most)


class SlurmUnavailableError(MuraError, CompactHydraException):
    """SLURM cannot take the sweep: not installed here, not answering, refusing the submission, or holding its
    jobs pending for a reason that means they can never start. Hydra prints it as one line, without a traceback."""


class SlurmJobLostError(MuraError, CompactHydraException):
    """Jobs of the sweep ended without writing a result (cancelled, killed by SLURM, or gone from the queue);
    the other jobs ran to their end. Hydra prints it as one line, without a traceback."""


def partitions() -> list[str]:
    """The partitions the SLURM controller knows; raises SlurmUnavailableError saying what to do when SLURM is
    not installed or does not answer."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise SlurmUnavailableError(
            "hydra/launcher=slurm submits each job with sbatch, which is not installed here: run the sweep on your "
            f"cluster's login node, start the one-node test cluster with `{START_TEST_CLUSTER}`, or run the jobs "
            f"on this machine with {RUN_LOCALLY}"
        )
    try:
        answer = subprocess.run(
            ["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        answer = subprocess.CompletedProcess([], 1, "", f"no answer within {SINFO_TIMEOUT_S} s")
    if answer.returncode != 0:
        reason = " ".join(answer.stderr.split()) or f"sinfo exited with code {answer.returncode}"
        raise SlurmUnavailableError(
            f"the SLURM controller does not answer ({reason}); nothing was submitted. Start the one-node test "
            f"cluster with `{START_TEST_CLUSTER}`, or check that SLURM_CONF / /etc/slurm/slurm.conf names your "
            "cluster's controller"
        )
    return sorted(set(answer.stdout.split()))


def refusal(err: FailedJobError) -> str:
    """SLURM's reason for refusing a submission: the last `error:` line sbatch printed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["sbatch failed without a message"])[-1]


def submitted_by_sbatch(err: FailedJobError) -> bool:
    """Whether the error is sbatch refusing a submission (not a job that failed while running)."""
    cause = err.__cause__
    return isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch"


def checked_launch(launch: Callable[[], ReturnT], partition: str | None) -> ReturnT:
    """Run a submitit launch after checking that SLURM answers; a submission sbatch refuses becomes one
    SlurmUnavailableError line (the sweep is one job array, so nothing of it was submitted)."""
    from submitit.core.utils import FailedJobError

    known = partitions()
    try:
        return launch()
    except FailedJobError as err:
        if not submitted_by_sbatch(err):
            raise
        raise SlurmUnavailableError(
            f"SLURM refused the sweep, nothing was submitted: {refusal(err)} (partition: {partition or 'default'}; "
            f"this cluster has: {', '.join(known) or 'none'}; set hydra.launcher.partition=NAME)"
        ) from None


def wait_for_jobs(
    jobs: Sequence[Job],
    watcher: QueueWatcher,
    request: JobRequest,
    partition: str | None,
    on_lost: Callable[[int, str], None],
) -> None:
    """Wait until every job has written its result file or ended without one. A job pending for a reason that
    means it can never start (slurm_queue.NEVER_STARTS) cancels the sweep (stop_unstartable). `on_lost(index, how
    it ended)` is called once for each job that ended without a result and still has none a poll later (a slow
    file system's grace), while the others are waited for."""
    for job in jobs:
        watcher.register_job(job.job_id)
    waiting = dict(enumerate(jobs))
    ended_at: dict[int, float] = {}
    while waiting:
        watcher.update_if_long_enough("standard")
        for job in jobs:
            if reason := watcher.never_starts(job.job_id):
                stop_unstartable(jobs, watcher, request, partition, job, reason)
        now = time.monotonic()
        for index, job in list(waiting.items()):
            if has_result(job):
                del waiting[index]
            elif watcher.is_done(job.job_id, mode="cache") and now - ended_at.setdefault(index, now) >= watcher.delay_s:
                del waiting[index]
                on_lost(index, watcher.ending(job.job_id))
        if waiting:
            time.sleep(RESULT_CHECK_S)


def has_result(job: Job) -> bool:
    """Whether every task of the job has written its result file (as submitit's own `job.done()` asks)."""
    return all(job.task(task).paths.result_pickle.exists() for task in range(job.num_tasks))


def stop_unstartable(
    jobs: Sequence[Job], watcher: QueueWatcher, request: JobRequest, partition: str | None, job: Job, reason: str
) -> NoReturn:
    """Cancel the sweep's jobs still in the queue and raise SlurmUnavailableError: SLURM's reason, the request,
    the partition's largest node and the setting to change."""
    from mura_lightning.cluster.slurm_queue import partition_size, settings_to_fit

    queued = [other for other in jobs if not watcher.is_done(other.job_id, mode="cache")]
    for other in queued:
        other.cancel(check=False)
    size = partition_size(partition)
    settings = settings_to_fit(request, size) if size else []
    change = (
        f"set {' '.join(settings)}"
        if settings
        else "ask for less (hydra.launcher.cpus_per_task, mem_gb, timeout_min, trainer.devices) or use another "
        f"partition (hydra.launcher.partition=NAME; this cluster has: {', '.join(partitions()) or 'none'})"
    )
    where = size.describe() if size else f"sinfo does not describe partition {partition or '(default)'}"
    raise SlurmUnavailableError(
        f"SLURM job {job.job_id} can never start (pending, reason {reason}): each job asks for {request.describe()}; "
        f"{where}. Cancelled the sweep's {len(queued)} queued job(s) ({', '.join(o.job_id for o in queued)}); {change}"
    )


def leave_lost_error(job_id: str, ending: str, cfg: DictConfig) -> NoReturn:
    """A Hydra task standing in for a job that ended without a result (run in the sweep's process by Hydra's
    run_job, which makes the job's folder and .hydra/ as a job would): leave error.txt saying how it ended in that
    folder, unless the job left its own error or results there, then raise SlurmJobLostError."""
    message = f"SLURM job {job_id} ended without a result ({ending})"
    folder = Path(HydraConfig.get().runtime.output_dir)
    if not (folder / ERROR_FILE).exists() and not (folder / RESULTS_FILE).exists():
        write_text_atomic(folder / ERROR_FILE, message + "\n")
    raise SlurmJobLostError(message)


def lost_jobs_message(endings: dict[str, str], finished: int, sweep_dir: str | Path) -> str:
    """One line naming the jobs that ended without a result (job id -> how it ended) and how to see them all."""
    named = ", ".join(f"{job_id}: {ending}" for job_id, ending in endings.items())
    return (
        f"{len(endings)} SLURM job(s) ended without a result ({named}); the other {finished} job(s) ran to their end. "
        f"All jobs in one table: python -m mura_lightning.summarize {sweep_dir}"
    )
