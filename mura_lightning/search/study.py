"""The Optuna study of a search in its folder's SQLite database: opened or resumed, interrupted trials failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, open_dict
from optuna.trial import TrialState

from mura_lightning.config import instantiate
from mura_lightning.dirnames import override_key
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, write_text_atomic

log = logging.getLogger(__name__)

STUDY_DB = "optuna.db"
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
RUN_DIR_ATTR = "run_dir"  # the trial's user attribute holding its folder
SETTINGS_ATTR = "settings"  # the study's user attribute: the overrides it was created with
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED_TEXT = "interrupted: the search process ended while this trial ran; marked failed when the search resumed\n"


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


def check_settings(study: optuna.Study, study_dir: Path, settings: list[str]) -> None:
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
            f"study {study.study_name} in {study_dir / STUDY_DB} was created with other settings: "
            f"{'; '.join(changes)}. To start another search, give it another name "
            f"(hparams_search.study_name=NAME); to resume this one, run it with the settings it was created with: "
            f"{' '.join(created) or 'none'}"
        )


def open_study(search: DictConfig, study_dir: Path, source: str, settings: list[str]) -> optuna.Study:
    """The study in <study_dir>/optuna.db, created or loaded, made with the overrides `settings` (a study made
    with others is refused). The sampler's seed is offset by the number of trials already stored, so a resumed
    search draws new values rather than replaying its first ones."""
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / STUDY_DB}")
    study = optuna.create_study(
        study_name=str(search.study_name),
        storage=storage,
        direction=direction(str(search.direction), source),
        pruner=instantiate(search.pruner),
        load_if_exists=True,
    )
    check_settings(study, study_dir, settings)
    sampler_cfg = search.sampler.copy()
    stored = len(study.get_trials(deepcopy=False))
    if stored and sampler_cfg.get("seed") is not None:
        with open_dict(sampler_cfg):
            sampler_cfg.seed = int(sampler_cfg.seed) + stored
    study.sampler = instantiate(sampler_cfg)
    return study


def fail_interrupted(study: optuna.Study) -> int:
    """Mark the trials a killed search left RUNNING as failed (one search process per study), with error.txt
    in their folders; the number marked."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        if run_dir and Path(run_dir).is_dir():
            write_text_atomic(Path(run_dir) / ERROR_FILE, INTERRUPTED_TEXT)
        log.warning("trial %d was interrupted by the end of an earlier search: marked failed", trial.number)
    return len(stale)


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials are complete, pruned and failed."""
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(trial.state == state for trial in trials) for state in FINISHED}
