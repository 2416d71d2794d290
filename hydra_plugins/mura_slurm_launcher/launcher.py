"""`hydra/launcher=slurm`: submitit's SLURM launcher with clear errors when SLURM is missing or refuses the sweep
(mura_lightning/cluster/slurm_launcher.py). Hydra takes launchers only from the hydra_plugins package, hence this
module. Needs the Hydra submitit plugin (`pip install -e '.[slurm]'`); without it nothing is defined here."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from hydra.core.utils import JobReturn

from mura_lightning.cluster.slurm_launcher import checked_launch

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:
    SlurmLauncher = None

if SlurmLauncher is not None:

    class CheckedSlurmLauncher(SlurmLauncher):
        """submitit's SLURM launcher that checks SLURM answers before submitting and reports a refused
        submission (an unknown partition, too many resources) in one line."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            """Submit the sweep's jobs as one SLURM job array and wait for their results."""
            return checked_launch(partial(super().launch, job_overrides, initial_job_idx), self.params.get("partition"))
