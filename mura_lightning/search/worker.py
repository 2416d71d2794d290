"""One worker of a search: its share of the machine, and its loop over the study's trials, run side by side with
the other workers' until the study has its n_trials finished trials."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from mura_lightning.dirnames import override_key
from mura_lightning.search.storage import Heartbeat
from mura_lightning.search.study import fail_lost_trials, progress
from mura_lightning.search.trial import Objective

log = logging.getLogger(__name__)

SLURM_CPUS = "SLURM_CPUS_PER_TASK"  # the cores SLURM gave each task of the job
SUBMITIT_EXECUTOR = "SUBMITIT_EXECUTOR"  # how submitit started this job: "local" or "slurm"
LOADER_WORKERS_KEY = "data.num_workers"


def worker_name(worker: int, n_workers: int) -> str:
    """The worker as trials and log lines name it: its number, host and process id."""
    return f"worker {worker} of {n_workers}, {socket.gethostname()}:{os.getpid()}"


def cpu_share(n_workers: int) -> tuple[int, str]:
    """The cores this worker may use, and where that number comes from: SLURM's allocation in a SLURM job, else
    the cores this process may run on, split between the workers on this machine."""
    if os.environ.get(SUBMITIT_EXECUTOR) != "local" and os.environ.get(SLURM_CPUS):
        return int(os.environ[SLURM_CPUS]), f"{SLURM_CPUS}={os.environ[SLURM_CPUS]}"
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // n_workers), f"{cores} cores (os.sched_getaffinity) // {n_workers} workers"


def take_share(run_overrides: Sequence[str], asked_loader_workers: int, n_workers: int, name: str) -> list[str]:
    """Keep this worker within its share of the machine: torch's threads set to its cores, and the trials'
    `data.num_workers` cut to the cores left beside the training process (never raised); the trials' overrides
    with that setting, and a log line saying what was taken."""
    import torch

    cores, source = cpu_share(n_workers)
    loader_workers = min(asked_loader_workers, cores - 1)
    torch.set_num_threads(cores)
    log.info(
        "%s: %d core(s) from %s: torch threads %d, %s=%d (asked %d)",
        name,
        cores,
        source,
        cores,
        LOADER_WORKERS_KEY,
        loader_workers,
        asked_loader_workers,
    )
    kept = [line for line in run_overrides if override_key(line) != LOADER_WORKERS_KEY]
    return [*kept, f"{LOADER_WORKERS_KEY}={loader_workers}"]


def run_trials(study: optuna.Study, objective: Objective, n_trials: int, heartbeat: Heartbeat) -> int:
    """Run the study's trials, one at a time, until it has `n_trials` finished ones, as one of any number of
    workers: a trial starts only while fewer than `n_trials` are finished, running or queued (Optuna's
    MaxTrialsCallback counts only finished trials, so N workers would overshoot by up to N - 1); a queued retry
    of a lost trial comes first; when all are taken, the worker waits for the running ones, failing those whose
    worker went silent (they come back queued). Two workers asking at the very same moment for the last trial
    can both start one, as with MaxTrialsCallback. The number of trials this worker ran."""
    ran = 0
    waiting_for: tuple[int, ...] = ()
    while True:
        fail_lost_trials(study, heartbeat)
        now = progress(study)
        if now.finished >= n_trials:
            return ran
        if now.taken >= n_trials and not now.waiting:
            running = tuple(trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if running != waiting_for:
                log.info(
                    "every trial left is running elsewhere (%s): waiting for them; one silent for %d s is retried",
                    ", ".join(map(str, running)),
                    heartbeat.grace_period,
                )
                waiting_for = running
            time.sleep(heartbeat.poll_s)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except Exception:
            number = objective.number
            if number is None or study.get_trials(deepcopy=False)[number].state != TrialState.FAIL:
                raise
            log.warning(  # Optuna cannot record a result for a trial another worker failed: it raises
                "trial %d was taken as lost while this worker still ran it (its heartbeat came late: give "
                "hparams_search.grace_period more margin); its result is dropped, its retry counts instead",
                number,
            )
        ran += 1
