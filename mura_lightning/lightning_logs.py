"""Lightning's log lines in the run's own log. Importing Lightning gives its loggers handlers of their own: the
`lightning` logger always (printing `INFO: ...`), `lightning.pytorch` and `lightning.fabric` when the root logger
has none yet (and then they stop passing lines on to it). Imported after Hydra configured logging, as `tune`
does, each line printed twice; imported before, as `train` does, its lines missed the run's format and log file."""

from __future__ import annotations

import logging
import os
import warnings

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
LIGHTNING_NOTICES_LOGGER = "lightning.pytorch.utilities.rank_zero"
LIGHTNING_TIPS = ("💡 Tip:",)  # Lightning's advertisements of its cloud services (litlogger, litmodels)
# Third-party warnings about Lightning's own code, which a user can do nothing about (message pattern, category):
LIGHTNING_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # torch, on Lightning's _pytree
    # mixed precision keeps fp32 weights, so the summary's "using 32 bits instead" is right:
    (r"Precision (bf)?16-mixed is not supported by the model summary", UserWarning),
)
# Lightning's hint to prepend srun, given wherever srun is installed (it asks at every fit): noise outside a job.
SRUN_HINT = (r"The `srun` command is available on your system but is not used", Warning)
SLURM_JOB_VARIABLE = "SLURM_JOB_ID"


class DropTips(logging.Filter):
    """Leaves out Lightning's tips (log records starting with one of LIGHTNING_TIPS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_TIPS)


def route_lightning_logs() -> None:
    """Send Lightning's log lines through the root logger's handlers only (the run's format, stderr and log
    file), once each, and leave out its notices that are not about the run (`silence_lightning_notices`)."""
    import lightning  # noqa: F401  (importing it adds the handlers removed here)

    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    silence_lightning_notices()


def silence_lightning_notices() -> None:
    """Leave out Lightning's tips, the named third-party warnings about Lightning's own code (LIGHTNING_WARNINGS)
    and, outside a SLURM job, Lightning's hint to start the command with srun; every other warning, those about
    the user's settings among them, still shows."""
    notices = logging.getLogger(LIGHTNING_NOTICES_LOGGER)
    if not any(isinstance(existing, DropTips) for existing in notices.filters):
        notices.addFilter(DropTips())
    outside_slurm = SLURM_JOB_VARIABLE not in os.environ
    for message, category in (*LIGHTNING_WARNINGS, *([SRUN_HINT] if outside_slurm else [])):
        warnings.filterwarnings("ignore", message=message, category=category)
