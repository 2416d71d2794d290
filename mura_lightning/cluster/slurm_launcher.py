"""What `hydra/launcher=slurm` adds to submitit's SLURM launcher (hydra_plugins/mura_slurm_launcher/): a check
that SLURM answers before submitting, and a refused submission as one line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from hydra.errors import CompactHydraException

from mura_lightning.errors import MuraError

if TYPE_CHECKING:
    from submitit.core.utils import FailedJobError

ReturnT = TypeVar("ReturnT")

SINFO_TIMEOUT_S = 30
START_TEST_CLUSTER = "sudo tests/slurm/start.sh"
RUN_LOCALLY = "hydra/launcher=submitit_local"


class SlurmUnavailableError(MuraError, CompactHydraException):
    """SLURM cannot take the sweep: not installed here, not answering, or refusing the submission. Hydra prints
    it as one line, without a traceback."""


def partitions() -> list[str]:
    """The partitions the SLURM controller knows; raises SlurmUnavailableError saying what to do when SLURM is
    not installed or does not answer."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise SlurmUnavailableError(
            "hydra/launcher=slurm submits each job with sbatch, which is not installed here: run the sweep on your "
            f"cluster's login node, start the one-node test cluster with `{START_TEST_CLUSTER}`, or run the jobs "
            f"on this machine with {RUN_LOCALLY}"
        )
    try:
        answer = subprocess.run(
            ["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        answer = subprocess.CompletedProcess([], 1, "", f"no answer within {SINFO_TIMEOUT_S} s")
    if answer.returncode != 0:
        reason = " ".join(answer.stderr.split()) or f"sinfo exited with code {answer.returncode}"
        raise SlurmUnavailableError(
            f"the SLURM controller does not answer ({reason}); nothing was submitted. Start the one-node test "
            f"cluster with `{START_TEST_CLUSTER}`, or check that SLURM_CONF / /etc/slurm/slurm.conf names your "
            "cluster's controller"
        )
    return sorted(set(answer.stdout.split()))


def refusal(err: FailedJobError) -> str:
    """SLURM's reason for refusing a submission: the last `error:` line sbatch printed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["sbatch failed without a message"])[-1]


def submitted_by_sbatch(err: FailedJobError) -> bool:
    """Whether the error is sbatch refusing a submission (not a job that failed while running)."""
    cause = err.__cause__
    return isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch"


def checked_launch(launch: Callable[[], ReturnT], partition: str | None) -> ReturnT:
    """Run a submitit launch after checking that SLURM answers; a submission sbatch refuses becomes one
    SlurmUnavailableError line (the sweep is one job array, so nothing of it was submitted)."""
    from submitit.core.utils import FailedJobError

    known = partitions()
    try:
        return launch()
    except FailedJobError as err:
        if not submitted_by_sbatch(err):
            raise
        raise SlurmUnavailableError(
            f"SLURM refused the sweep, nothing was submitted: {refusal(err)} (partition: {partition or 'default'}; "
            f"this cluster has: {', '.join(known) or 'none'}; set hydra.launcher.partition=NAME)"
        ) from None
