"""The Optuna study of a search: made or resumed in its storage (mura_lightning.search.storage) with the settings
it was made with, the trials of workers that stopped failed and retried, and how far the search has come."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, open_dict
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from mura_lightning.config import instantiate
from mura_lightning.dirnames import override_key
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, write_text_atomic
from mura_lightning.search.storage import Heartbeat

log = logging.getLogger(__name__)

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
RUN_DIR_ATTR = "run_dir"  # the trial's user attribute holding its folder
WORKER_ATTR = "worker"  # the trial's user attribute naming the worker that runs it (host, process, worker number)
SETTINGS_ATTR = "settings"  # the study's user attribute: the overrides it was created with
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
LOST_TEXT = "lost: its worker stopped while it ran (silent for over {grace} s); marked failed, {retry}\n"


def direction(value: str, source: str) -> str:
    """Optuna's study direction for `hparams_search.direction` (max or min)."""
    if value not in DIRECTIONS:
        raise MuraError(f"hparams_search.direction in {source} is {value!r}; use max or min (optimized_mode)")
    return DIRECTIONS[value]


def check_n_trials(n_trials: Any, source: str) -> int:
    """`hparams_search.n_trials` as a positive integer."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise MuraError(f"hparams_search.n_trials in {source} is {n_trials!r}; give a whole number, 1 or more")
    return n_trials


def check_n_workers(n_workers: Any, source: str) -> int:
    """`hparams_search.n_workers` as a positive integer."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise MuraError(
            f"hparams_search.n_workers in {source} is {n_workers!r}; give a whole number, 1 or more: the processes "
            "(or SLURM jobs, with hydra/launcher=slurm) that run the study's trials side by side"
        )
    return n_workers


def check_heartbeat(search: DictConfig, source: str) -> Heartbeat:
    """`hparams_search.heartbeat_interval`, `grace_period` and `retries` as a Heartbeat: whole seconds, a grace
    period longer than the interval, retries 0 or more."""
    interval, grace, retries = search.heartbeat_interval, search.grace_period, search.retries
    for key, value, least in (("heartbeat_interval", interval, 1), ("grace_period", grace, 1), ("retries", retries, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise MuraError(f"hparams_search.{key} in {source} is {value!r}; give a whole number, {least} or more")
    if grace <= interval:
        raise MuraError(
            f"hparams_search.grace_period={grace} in {source} is not longer than heartbeat_interval={interval}: a "
            f"live worker's trial would be taken as lost; give a few heartbeats, e.g. {3 * interval}"
        )
    return Heartbeat(interval, grace, retries)


def setting_changes(created: list[str], now: list[str]) -> list[str]:
    """How the overrides `now` differ from those a study was `created` with, one phrase per key."""
    before = {override_key(line): line for line in created}
    after = {override_key(line): line for line in now}
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            changes.append(f"{before[key]} (given when the study was created, not now)")
        elif key not in before:
            changes.append(f"{after[key]} (given now, not when the study was created)")
        elif before[key] != after[key]:
            changes.append(f"{after[key]} (created with {before[key]})")
    return changes


def check_settings(study: optuna.Study, where: str, settings: list[str]) -> None:
    """Record the overrides a new study is created with (the command's, which name it); refuse to resume a
    study created with others, which would mix trials of two searches."""
    created = study.user_attrs.get(SETTINGS_ATTR)
    if created is None:
        if study.get_trials(deepcopy=False):
            log.warning("study %s has no recorded settings (an older search): recording these", study.study_name)
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    changes = setting_changes(list(created), settings)
    if changes:
        raise MuraError(
            f"study {study.study_name} in {where} was created with other settings: "
            f"{'; '.join(changes)}. To start another search, give it another name "
            f"(hparams_search.study_name=NAME); to resume this one, run it with the settings it was created with: "
            f"{' '.join(created) or 'none'}"
        )


def open_study(
    search: DictConfig, storage: BaseStorage, where: str, source: str, settings: list[str], worker: int | None
) -> optuna.Study:
    """The search's study in `storage` (shown as `where`): made or resumed by the search command (`worker`
    None), which records the overrides `settings` it is made with and refuses a study made with others, or loaded
    by worker number `worker`. The sampler's seed is drawn from the search's seed, the trials already stored and
    the worker's number, so workers and resumed searches draw new values rather than replaying others'."""
    pruner = instantiate(search.pruner)
    if worker is None:
        study = optuna.create_study(
            study_name=str(search.study_name),
            storage=storage,
            direction=direction(str(search.direction), source),
            pruner=pruner,
            load_if_exists=True,
        )
        check_settings(study, where, settings)
    else:
        study = optuna.load_study(study_name=str(search.study_name), storage=storage, pruner=pruner)
    sampler_cfg = search.sampler.copy()
    if sampler_cfg.get("seed") is not None:
        with open_dict(sampler_cfg):
            sampler_cfg.seed = sampler_seed(int(sampler_cfg.seed), len(study.get_trials(deepcopy=False)), worker or 0)
    study.sampler = instantiate(sampler_cfg)
    return study


def sampler_seed(seed: int, stored: int, worker: int) -> int:
    """A sampler seed of its own for each search seed, count of stored trials and worker number."""
    return int(np.random.SeedSequence([abs(seed), stored, worker]).generate_state(1)[0])


class LostTrial:
    """What becomes of a trial whose worker stopped (the storage's stale-trial callback): error.txt in its folder
    says so, and Optuna's RetryHeartbeatStaleTrialCallback queues it again with the same values, `retries` times
    at most, for the next worker that asks."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Record the lost trial and queue its retry."""
        tries = len(retry_history(trial)) + 1
        retried = tries <= self.heartbeat.retries
        fate = "retried as a new trial with its values" if retried else f"not retried again (tried {tries} times)"
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        if run_dir and Path(run_dir).is_dir():
            text = LOST_TEXT.format(grace=self.heartbeat.grace_period, retry=fate)
            write_text_atomic(Path(run_dir) / ERROR_FILE, text)
        log.warning("trial %d was lost: its worker stopped while it ran; marked failed, %s", trial.number, fate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the lost trials a trial retries, the first one first (empty for a trial of its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def fail_lost_trials(study: optuna.Study, heartbeat: Heartbeat) -> None:
    """Fail the running trials whose worker stopped, each then handed to the storage's stale-trial callback
    (LostTrial): those Optuna's heartbeat finds silent for the grace period, and those of a search from before
    workers and heartbeats (no worker recorded) that started longer ago. A live worker's trial is never failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        if WORKER_ATTR in trial.user_attrs or started is None:
            continue
        if (datetime.now(started.tzinfo) - started).total_seconds() <= heartbeat.grace_period:
            continue
        try:
            failed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        if failed:
            storage.get_heartbeat_stale_trial_callback()(study, copy.deepcopy(storage.get_trial(trial._trial_id)))


@dataclass(frozen=True)
class Progress:
    """How far a study has come: trials finished (complete, pruned, or failed and not retried), running, queued
    (retries of lost trials waiting for a worker), and lost trials retried."""

    finished: int
    running: int
    waiting: int
    retried: int

    @property
    def taken(self) -> int:
        """Trials finished, running or queued: those that count towards n_trials."""
        return self.finished + self.running + self.waiting


def progress(study: optuna.Study) -> Progress:
    """The study's progress now."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in retry_history(trial)}
    finished = sum(trial.state in FINISHED and trial.number not in retried for trial in trials)
    running = sum(trial.state == TrialState.RUNNING for trial in trials)
    waiting = sum(trial.state == TrialState.WAITING for trial in trials)
    return Progress(finished, running, waiting, len(retried))


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials are complete, pruned and failed."""
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(trial.state == state for trial in trials) for state in FINISHED}
