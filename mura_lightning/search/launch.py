"""The workers of a search as the jobs of Hydra's launcher, as a multirun's jobs are: N SLURM jobs with
hydra/launcher=slurm (or any launcher chosen), N local processes when none is (Hydra's basic launcher would run
them one after another in this process; conf/hydra/launcher/local.yaml). Each job runs the tune command as worker
number i of the study, logging into <study_dir>/workers/<i>/."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig

import mura_lightning.cluster.slurm  # noqa: F401  (registers ${mura.slurm_gpus:}, used by hydra/launcher=slurm)
from mura_lightning.dirnames import override_key
from mura_lightning.errors import MuraError
from mura_lightning.search import INSTALL_HINT
from mura_lightning.search.storage import Heartbeat
from mura_lightning.search.study import fail_lost_trials, progress

log = logging.getLogger(__name__)

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
LOCAL_LAUNCHER = "hydra/launcher=local"  # the workers' launcher when none is chosen
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"  # provides it (hydra-submitit-launcher)
WORKERS_DIR = "workers"  # <study_dir>/workers/<i>/: worker i's log and .hydra/; .submitit/: submitit's files
WORKER_KEY = "hparams_search.worker_index"
N_WORKERS_KEY = "hparams_search.n_workers"
JOB_LOG = "tune.log"  # a worker's log in its folder (conf/hydra/job_logging: <job name>.log)


def launcher_target() -> str:
    """The class of the launcher the command was given (Hydra's basic launcher when none was chosen)."""
    return str(HydraConfig.get().launcher.get("_target_", BASIC_LAUNCHER))


def in_this_process(n_workers: int) -> bool:
    """Whether the search runs its trials in this process: one worker, and no launcher chosen."""
    return n_workers == 1 and launcher_target() == BASIC_LAUNCHER


def launch_config(study_dir: Path) -> DictConfig:
    """The command's config composed again as a multirun's, as Hydra gives its launcher: the command's overrides,
    the local launcher when none was chosen, and the sweep folder <study_dir>/workers with a folder per job."""
    hydra_cfg = HydraConfig.get()
    hydra_overrides = [line for line in hydra_cfg.overrides.hydra if override_key(line) != "hydra.mode"]
    if launcher_target() == BASIC_LAUNCHER:
        require_local_launcher()
        hydra_overrides.append(LOCAL_LAUNCHER)
    hydra_overrides += [
        f"hydra.mode={RunMode.MULTIRUN.name}",
        f"hydra.sweep.dir={study_dir / WORKERS_DIR}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    return (
        GlobalHydra.instance()
        .config_loader()
        .load_configuration(hydra_cfg.job.config_name, [*hydra_overrides, *hydra_cfg.overrides.task], RunMode.MULTIRUN)
    )


def require_local_launcher() -> None:
    """Raise a MuraError saying how to install the submitit launcher, which starts local workers, when it is missing."""
    try:
        importlib.import_module(SUBMITIT_PLUGIN)
    except ImportError as err:
        raise MuraError(
            f"hparams_search.n_workers > 1 starts its workers with Hydra's submitit launcher, which is not installed: "
            f"{INSTALL_HINT}"
        ) from err


def worker_overrides(task_overrides: list[str], worker: int, n_workers: int) -> list[str]:
    """A worker job's overrides: the command's, with its number and the count of workers launched."""
    kept = [line for line in task_overrides if override_key(line) not in (WORKER_KEY, N_WORKERS_KEY)]
    return [*kept, f"{N_WORKERS_KEY}={n_workers}", f"{WORKER_KEY}={worker}"]


def worker_task(cfg: DictConfig) -> dict[str, int]:
    """What each worker job runs: the tune command (as a worker, hparams_search.worker_index being set) under the
    entry points' failure contract. A function of this module, so a launcher pickles it by name."""
    from mura_lightning.cli import run_as_job
    from mura_lightning.tune import tune

    return run_as_job(tune, "tune")(cfg)


def launch_workers(study_dir: Path, n_workers: int, wait_for_others: Callable[[], None]) -> list[str]:
    """Launch `n_workers` jobs running `worker_task` as workers of the study and wait for them; a line for each
    worker that failed (its error and log) or ended without a result (killed, cancelled). A launcher that stops
    waiting at a job lost that way (submitit's raise) leaves the others running: `wait_for_others` waits for them."""
    from hydra._internal.callbacks import Callbacks

    config = launch_config(study_dir)
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(config)),
        task_function=worker_task,
        config=config,
    )
    task_overrides = list(HydraConfig.get().overrides.task)
    jobs = [worker_overrides(task_overrides, worker, n_workers) for worker in range(n_workers)]
    target, folder = config.hydra.launcher._target_, config.hydra.sweep.dir
    log.info("launching %d workers (%s); their logs: %s/<n>/%s", n_workers, target, folder, JOB_LOG)
    try:
        returns = launcher.launch(jobs, initial_job_idx=0)
    except lost_worker_errors() as err:
        log.warning("a worker ended without a result (%s); waiting for the others", err)
        wait_for_others()
        return [f"a worker ended without a result ({' '.join(str(err).split())[:300]})"]
    return [failure(number, job) for number, job in enumerate(returns) if job.status != JobStatus.COMPLETED]


def lost_worker_errors() -> tuple[type[Exception], ...]:
    """The errors of a launch whose job ended without a result (killed, cancelled): submitit's."""
    try:
        from submitit.core.utils import FailedJobError, UncompletedJobError
    except ImportError:
        return ()
    return (FailedJobError, UncompletedJobError)


def failure(number: int, job: JobReturn) -> str:
    """The line for a worker job that failed: its error and its log."""
    folder = Path(str(job.hydra_cfg.hydra.runtime.output_dir)) if job.hydra_cfg else None
    where = f" (its log: {folder / JOB_LOG})" if folder else ""
    return f"worker {number} failed: {job._return_value}{where}"


def wait_for_workers(study: optuna.Study, n_trials: int, heartbeat: Heartbeat) -> None:
    """After a worker ended without a result while others may still run: wait until the study has `n_trials`
    finished trials, or no trial has run for the grace period (no worker is left), failing lost trials meanwhile
    so that a live worker retries them."""
    idle_since = None
    while True:
        fail_lost_trials(study, heartbeat)
        now = progress(study)
        if now.finished >= n_trials:
            return
        if now.running:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > heartbeat.grace_period:
            return
        time.sleep(heartbeat.poll_s)
