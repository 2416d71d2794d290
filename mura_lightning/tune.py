"""`python -m mura_lightning.tune [train overrides] [hparams_search.n_trials=N ...]`: an Optuna search over train
runs, stored in <study_dir>/optuna.db so the same command re-run resumes it."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mura_lightning.cli import hydra_app
from mura_lightning.errors import MuraError
from mura_lightning.lightning_logs import route_lightning_logs
from mura_lightning.resolvers import job_overrides
from mura_lightning.search import require_optuna
from mura_lightning.tracking.mlflow_run import check_tracking

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
    """Run the search's missing trials (n_trials less those finished), write its report; the trial counts."""
    require_optuna()
    from mura_lightning.search.report import write_report
    from mura_lightning.search.space import parse_space
    from mura_lightning.search.study import check_n_trials, counts, fail_interrupted, open_study
    from mura_lightning.search.trial import Objective, train_overrides

    route_lightning_logs()
    source = search_source()
    search = cfg.hparams_search
    n_trials = check_n_trials(search.n_trials, source)
    space = parse_space(search.params, source)
    check_single_process(cfg)
    study_dir = Path(cfg.study_dir)
    study = open_study(search, study_dir, source, job_overrides())
    interrupted = fail_interrupted(study)
    finished = sum(counts(study).values())
    missing = max(0, n_trials - finished)
    log.info(
        "study %s in %s: %d of %d trials finished (%d interrupted, now failed); running %d",
        study.study_name,
        study_dir,
        finished,
        n_trials,
        interrupted,
        missing,
    )
    if missing:
        task_overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        objective = Objective(space, train_overrides(task_overrides, space), study_dir)
        study.optimize(objective, n_trials=missing, catch=(Exception,))
    result = counts(study)
    lines = [f"trials: {result['complete']} complete, {result['pruned']} pruned, {result['fail']} failed"]
    lines.extend(write_report(study, study_dir, space))
    print("\n".join(lines))
    return result


@hydra_app("tune", check=check_tracking)
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    tune(cfg)


if __name__ == "__main__":
    main()
