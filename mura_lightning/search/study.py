"""The Optuna study of a search in its folder's SQLite database: opened or resumed, interrupted trials failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, open_dict
from optuna.trial import TrialState

from mura_lightning.config import instantiate
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, write_text_atomic

log = logging.getLogger(__name__)

STUDY_DB = "optuna.db"
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
RUN_DIR_ATTR = "run_dir"  # the trial's user attribute holding its folder
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


def open_study(search: DictConfig, study_dir: Path, source: str) -> optuna.Study:
    """The study in <study_dir>/optuna.db, created or loaded. The sampler's seed is offset by the number of
    trials already stored, so a resumed search draws new values rather than replaying its first ones."""
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / STUDY_DB}")
    study = optuna.create_study(
        study_name=str(search.study_name),
        storage=storage,
        direction=direction(str(search.direction), source),
        pruner=instantiate(search.pruner),
        load_if_exists=True,
    )
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
