"""One search trial as a normal train run folder: its composed config and .hydra/ files, its log, pruning from
the validation metric, and pruned.txt or error.txt when it does not finish."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna_integration import PyTorchLightningPruningCallback

from mura_lightning.dirnames import dirname
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, HYDRA_DIR, PRUNED_FILE, write_text_atomic
from mura_lightning.search.space import Param, folder_label, overrides, suggest
from mura_lightning.search.study import RUN_DIR_ATTR, WORKER_ATTR
from mura_lightning.train import optimized_value, train

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train"
TRIAL_LOG = "train.log"
SEARCH_KEYS = ("hparams_search", "study_dir", "hydra")  # the tune command's own settings, not a train run's


class FitPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, reporting only the validation epochs of fit (not the validation
    and test of the best checkpoint after it), remembering the last epoch and value it reported."""

    epoch: int | None = None
    score: float | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Report the epoch's metric to the trial; raises optuna.TrialPruned when the pruner stops it."""
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        self.epoch, self.score = pl_module.current_epoch, None if value is None else float(value)
        super().on_validation_end(trainer, pl_module)


def train_overrides(task_overrides: Sequence[str], space: list[Param]) -> list[str]:
    """The tune command's overrides a trial's train run takes: not the search's own (hparams_search.*,
    study_dir, hydra.*), not paths.output_dir (each trial has its folder), not a searched key (the trial sets it)."""
    searched = {param.key for param in space}
    kept = []
    parsed_overrides = OverridesParser.create().parse_overrides(list(task_overrides))
    for text, parsed in zip(task_overrides, parsed_overrides, strict=True):
        key = parsed.key_or_group
        if key.split(".")[0] in SEARCH_KEYS or key == "paths.output_dir":
            continue
        if key in searched:
            log.warning("%s is searched (hparams_search.params): the command's %s is left out of the trials", key, text)
            continue
        kept.append(text)
    return kept


def trial_folder(study_dir: Path, number: int, space: list[Param], values: dict[str, Any]) -> Path:
    """<study_dir>/<number>_<parameters>: a folder name of letters, digits, `.`, `_` and `-` only
    (mura_lightning.dirnames)."""
    return study_dir / f"{number}_{dirname(folder_label(space, values))}"


def compose_trial(run_overrides: list[str], run_dir: Path) -> DictConfig:
    """The train config of a trial writing into `run_dir`, with its `hydra` node as a Hydra app sees it."""
    cfg = compose(TRAIN_CONFIG, overrides=[*run_overrides, f"paths.output_dir={run_dir}"], return_hydra_config=True)
    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(run_dir)
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A copy of a composed config without its `hydra` node: what a Hydra app's task function receives."""
    task_cfg = copy.deepcopy(cfg)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


@contextlib.contextmanager
def hydra_config(cfg: DictConfig) -> Iterator[None]:
    """Make the `hydra` node of `cfg` the HydraConfig (what `${hydra:...}` and train's run description read)."""
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = previous


@contextlib.contextmanager
def trial_log(run_dir: Path) -> Iterator[None]:
    """Copy the log lines of the trial into <run_dir>/train.log, as a train run's own log, formatted as the
    search's own log lines (conf/hydra/job_logging)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(run_dir / TRIAL_LOG)
    handler.setFormatter(next((h.formatter for h in root.handlers if h.formatter), logging.Formatter()))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def write_hydra_files(run_dir: Path, cfg: DictConfig, run_overrides: list[str]) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them for a run, so `summarize` and
    `evaluate` treat the trial as any other run folder."""
    folder = run_dir / HYDRA_DIR
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(without_hydra(cfg)))
    write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["hydra"])))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(ListConfig(run_overrides)))


class Objective:
    """Optuna's objective: draw the trial's values, train it in its folder, return `optimized_metric`. The trial
    records its folder and the worker (`worker`) that runs it."""

    def __init__(self, space: list[Param], run_overrides: list[str], study_dir: Path, worker: str) -> None:
        self.space, self.run_overrides, self.study_dir, self.worker = space, run_overrides, study_dir, worker
        self.number: int | None = None  # the number of the trial it runs or ran last

    def __call__(self, trial: optuna.Trial) -> float:
        """The trial's optimized_metric; raises TrialPruned when pruned, and the error when it fails."""
        self.number = trial.number
        values = suggest(trial, self.space)
        run_dir = trial_folder(self.study_dir, trial.number, self.space, values)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        if is_heartbeat_enabled(trial.storage):  # a trial names its worker once it has beaten (study.fail_lost_trials)
            trial.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(WORKER_ATTR, self.worker)
        run_overrides = [*self.run_overrides, *overrides(self.space, values)]
        log.info("trial %d (%s): %s -> %s", trial.number, self.worker, " ".join(overrides(self.space, values)), run_dir)
        with trial_log(run_dir):
            try:
                return run_trial(trial, run_overrides, run_dir)
            except optuna.TrialPruned:
                raise
            except Exception as err:
                write_text_atomic(run_dir / ERROR_FILE, "".join(traceback.format_exception(err)))
                log.error("trial %d failed: %s (traceback: %s)", trial.number, err, run_dir / ERROR_FILE)
                raise


def run_trial(trial: optuna.Trial, run_overrides: list[str], run_dir: Path) -> float:
    """Compose, record and train one trial; pruned.txt says where the pruner stopped it."""
    composed = compose_trial(run_overrides, run_dir)
    write_hydra_files(run_dir, composed, run_overrides)
    cfg = without_hydra(composed)
    pruning = FitPruning(trial, monitor=cfg.optimized_metric)
    with hydra_config(composed):
        try:
            results = train(cfg, extra_callbacks=[pruning])
        except optuna.TrialPruned:
            epochs = f"{pruning.epoch + 1} of {cfg.trainer.max_epochs} epochs"
            text = f"pruned after {epochs} (current_epoch {pruning.epoch}): {cfg.optimized_metric} = {pruning.score}\n"
            write_text_atomic(run_dir / PRUNED_FILE, text)
            log.info("trial %d %s", trial.number, text.strip())
            raise
    value = optimized_value(results, cfg)
    if not math.isfinite(value):
        raise MuraError(f"{cfg.optimized_metric} is {value} in {run_dir}: the trial gives the search no value")
    return value
