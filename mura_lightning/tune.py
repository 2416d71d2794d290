"""`python -m mura_lightning.tune [train overrides] [hparams_search.n_trials=N ...]`: an Optuna search over train
runs, stored in <study_dir>/optuna.db, or shared by `hparams_search.n_workers=N` workers (local processes, or
SLURM jobs with hydra/launcher=slurm) in <study_dir>/optuna.journal, so the same command re-run resumes it."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mura_lightning.cli import hydra_app
from mura_lightning.errors import MuraError
from mura_lightning.lightning_logs import route_lightning_logs
from mura_lightning.resolvers import job_overrides
from mura_lightning.search import require_optuna
from mura_lightning.tracking.mlflow_run import check_tracking

if TYPE_CHECKING:
    import optuna

    from mura_lightning.search.space import Param
    from mura_lightning.search.storage import Heartbeat

log = logging.getLogger(__name__)

CONFIG_GROUP = "hparams_search"


def search_source() -> str:
    """The config file the search settings come from, for error messages."""
    choice = HydraConfig.get().runtime.choices.get(CONFIG_GROUP) if HydraConfig.initialized() else None
    return f"conf/{CONFIG_GROUP}/{choice or 'optuna'}.yaml (or its overrides)"


def check_single_process(cfg: DictConfig) -> None:
    """Trials run inside this process: a DDP trainer, which relaunches the command per rank, cannot run them."""
    strategy = str(cfg.trainer.get("strategy", ""))
    if "ddp" in strategy:
        raise MuraError(f"trainer.strategy={strategy}: trials run in this one process; use trainer=cpu or trainer=gpu")


def tune(cfg: DictConfig) -> dict[str, int]:
    """Run the search's missing trials (n_trials less those finished) in this process or in worker jobs, write its
    report; the trial counts. As a worker job (hparams_search.worker_index set), run trials side by side with the
    other workers until the study has n_trials finished, and leave the report to the command that launched it."""
    require_optuna()
    from mura_lightning.search.launch import in_this_process, launch_workers, wait_for_workers
    from mura_lightning.search.report import write_report
    from mura_lightning.search.space import parse_space
    from mura_lightning.search.storage import open_storage, record_storage, shown, storage_location
    from mura_lightning.search.study import (
        LostTrial,
        check_heartbeat,
        check_n_trials,
        check_n_workers,
        counts,
        fail_lost_trials,
        open_study,
        progress,
    )

    route_lightning_logs()
    source = search_source()
    search = cfg.hparams_search
    n_trials = check_n_trials(search.n_trials, source)
    n_workers = check_n_workers(search.n_workers, source)
    heartbeat = check_heartbeat(search, source)
    space = parse_space(search.params, source)
    check_single_process(cfg)
    study_dir = Path(cfg.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    given = str(search.storage) if search.storage else None
    location = storage_location(given, study_dir, n_workers)
    storage = open_storage(location, heartbeat, LostTrial(heartbeat), given=given is not None)
    worker = search.worker_index
    study = open_study(search, storage, shown(location), source, job_overrides(), worker)
    if worker is not None:
        run_worker(cfg, study, space, n_trials, heartbeat, worker, n_workers)
        return counts(study)
    record_storage(study_dir, given)
    fail_lost_trials(study, heartbeat)
    before = progress(study)
    missing = max(0, n_trials - before.finished)
    local = in_this_process(n_workers)
    workers = min(n_workers, missing)
    log.info(
        "study %s in %s: %d of %d trials finished (%d running, %d queued); %d to run, %s",
        study.study_name,
        shown(location),
        before.finished,
        n_trials,
        before.running,
        before.waiting,
        missing,
        "in this process" if local else f"by {workers} worker job(s)",
    )
    problems: list[str] = []
    if missing and local:
        run_worker(cfg, study, space, n_trials, heartbeat)
    elif missing:
        problems = launch_workers(study_dir, workers, partial(wait_for_workers, study, n_trials, heartbeat))
    result, after = counts(study), progress(study)
    lines = [f"trials: {result['complete']} complete, {result['pruned']} pruned, {result['fail']} failed"]
    if after.retried:
        lines[0] += f" ({after.retried} of them lost with their worker and retried)"
    lines.extend(write_report(study, study_dir, space))
    lines.extend(problems)
    print("\n".join(lines))
    if after.finished < n_trials:
        raise MuraError(
            f"the search stopped with {after.finished} of {n_trials} trials finished"
            f"{': ' + '; '.join(problems) if problems else ''}; run the same command again to go on"
        )
    return result


def run_worker(
    cfg: DictConfig,
    study: optuna.Study,
    space: list[Param],
    n_trials: int,
    heartbeat: Heartbeat,
    worker: int | None = None,
    n_workers: int = 1,
) -> None:
    """Run trials of the study until it has n_trials finished ones: in this process (`worker` None), or as
    launched worker number `worker` of `n_workers`, which first takes its share of the machine."""
    from mura_lightning.search.trial import Objective, train_overrides
    from mura_lightning.search.worker import run_trials, take_share, worker_name

    name = worker_name(worker or 0, n_workers)
    task_overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    run_overrides = train_overrides(task_overrides, space)
    if worker is not None:
        run_overrides = take_share(run_overrides, int(cfg.data.num_workers), n_workers, name)
    ran = run_trials(study, Objective(space, run_overrides, Path(cfg.study_dir), name), n_trials, heartbeat)
    log.info("%s ran %d trial(s)", name, ran)


@hydra_app("tune", check=check_tracking)
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    tune(cfg)


if __name__ == "__main__":
    main()
