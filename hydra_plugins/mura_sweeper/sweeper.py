"""`hydra/sweeper=named` (conf/hydra/default.yaml's sweeper): Hydra's basic sweeper, naming each job's folder.
Only the sweeper sees every job of a sweep, so only it knows which overrides differ between them and can put
those first in the folder names (a job's own config holds its overrides, not the sweep's). Hydra takes sweepers
only from the hydra_plugins package, hence this module."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from mura_lightning.dirnames import override_key, sweep_dirnames

SUBDIR_KEY = "hydra.sweep.subdir"


class NamedJobSweeper(BasicSweeper):
    """Hydra's basic sweeper that sets each job's `hydra.sweep.subdir` to `<n>_<overrides>`, the overrides that
    differ between the jobs first (mura_lightning.dirnames.sweep_dirnames), unless the command sets it."""

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        """The next batch of jobs' overrides, each job with its folder name."""
        if self.batch_index == 0 and not self._subdir_given():
            self._name_jobs()
        return super().get_job_batch()

    def _subdir_given(self) -> bool:
        return any(override_key(line) == SUBDIR_KEY for line in self.config.hydra.overrides.hydra)

    def _name_jobs(self) -> None:
        jobs = [job for batch in self.overrides for job in batch]
        exclude_keys = set(self.config.hydra.job.config.override_dirname.exclude_keys)
        for job, name in zip(jobs, sweep_dirnames(jobs, exclude_keys), strict=True):
            job.append(f"{SUBDIR_KEY}={name}")
