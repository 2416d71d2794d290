"""`hydra/launcher=slurm`: submitit's SLURM launcher with clear errors when SLURM is missing or refuses the sweep,
and a wait that reads the queue (mura_lightning/cluster/slurm_launcher.py). Hydra takes launchers only from the
hydra_plugins package, hence this module. Needs the Hydra submitit plugin (`pip install -e '.[slurm]'`); without
it nothing is defined here."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job
from omegaconf import OmegaConf, open_dict

from mura_lightning.cluster.slurm_env import secondary_rank_overrides
from mura_lightning.cluster.slurm_launcher import (
    SlurmJobLostError,
    checked_launch,
    leave_lost_error,
    lost_jobs_message,
    wait_for_jobs,
)

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from mura_lightning.cluster.slurm_queue import CheckedSlurmQueueConf, JobRequest, QueueWatcher
except ImportError:
    SlurmLauncher = None

log = logging.getLogger(__name__)

LAUNCHER_ONLY = ("poll_s",)  # settings of this launcher, not of submitit's executor
EXECUTOR_INIT = ("submitit_folder", "max_num_timeout")  # given to submitit's executor when it is made

if SlurmLauncher is not None:
    ConfigStore.instance().store(
        group="hydra/launcher", name="checked_submitit_slurm", node=CheckedSlurmQueueConf, provider="mura_lightning"
    )

    class CheckedSlurmLauncher(SlurmLauncher):
        """submitit's SLURM launcher that checks SLURM answers before submitting, reports a refused submission
        in one line, stops the sweep when a job can never start, and reports a job that left the queue without
        a result as failed while the others run on."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            """Submit the sweep's jobs as one SLURM job array and wait for their results."""
            submit_and_wait = partial(self._submit_and_wait, job_overrides, initial_job_idx)
            return checked_launch(submit_and_wait, self.params.get("partition"))

        def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
            """Submit the jobs as submitit's Hydra launcher does (its `launch`, which then waits job by job for
            results with submitit's sacct watcher and has no hook in between): one job array, one task per job."""
            import submitit

            params = {key: value for key, value in self.params.items() if key not in LAUNCHER_ONLY}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR,
                folder=params["submitit_folder"],
                **{f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]},
            )
            generic = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(
                **{
                    key if key in generic else f"{self._EXECUTOR}_{key}": value
                    for key, value in params.items()
                    if key not in EXECUTOR_INIT
                }
            )
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            job_params = []
            for number, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
                job_params.append(
                    (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
                )
            return executor.map_array(self, *zip(*job_params, strict=True))

        def _submit_and_wait(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
            """Submit, wait for every job (mura_lightning.cluster.slurm_launcher.wait_for_jobs), and return each
            job's JobReturn: its own, or for a job that ended without a result a failed one naming all such jobs."""
            jobs = self._submit(job_overrides, initial_job_idx)
            lost: dict[int, JobReturn] = {}
            endings: dict[str, str] = {}

            def record_lost(index: int, ending: str) -> None:
                job_id = jobs[index].job_id
                log.warning("SLURM job %s ended without a result (%s); waiting for the others", job_id, ending)
                endings[job_id] = ending
                lost[index] = self._run_lost(job_overrides[index], initial_job_idx + index, job_id, ending)

            watcher = QueueWatcher(delay_s=self.params["poll_s"])
            request = JobRequest.from_launcher(self.params)
            wait_for_jobs(jobs, watcher, request, self.params.get("partition"), record_lost)
            if lost:
                error = SlurmJobLostError(
                    lost_jobs_message(endings, len(jobs) - len(lost), self.config.hydra.sweep.dir)
                )
                for job_return in lost.values():
                    job_return.return_value = error
            return [lost[index] if index in lost else job.results()[0] for index, job in enumerate(jobs)]

        def _run_lost(self, overrides: Sequence[str], number: int, job_id: str, ending: str) -> JobReturn:
            """The failed JobReturn of a job that ended without a result, run here by Hydra's run_job as the job
            would have run (its folder and .hydra/ made as a job makes them) with a task that leaves error.txt."""
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config.hydra.job):
                sweep_config.hydra.job.id = job_id
                sweep_config.hydra.job.num = number
            return run_job(
                hydra_context=self.hydra_context,
                task_function=partial(leave_lost_error, job_id, ending),
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
                configure_logging=False,
            )

        def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> JobReturn:
            """Run one sweep job in one of its SLURM tasks (every task runs it: one per GPU on each node); a task
            of rank > 0 leaves the job folder's files to rank 0."""
            job_name = self.config.hydra.job.name
            return super().__call__([*sweep_overrides, *secondary_rank_overrides(job_name)], *args, **kwargs)
