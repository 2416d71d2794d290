"""Lightning's log lines in the run's own log. Importing Lightning gives its loggers handlers of their own: the
`lightning` logger always (printing `INFO: ...`), `lightning.pytorch` and `lightning.fabric` when the root logger
has none yet (and then they stop passing lines on to it). Imported after Hydra configured logging, as `tune`
does, each line printed twice; imported before, as `train` does, its lines missed the run's format and log file."""

from __future__ import annotations

import logging

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def route_lightning_logs() -> None:
    """Send Lightning's log lines through the root logger's handlers only (the run's format, stderr and log
    file), once each."""
    import lightning  # noqa: F401  (importing it adds the handlers removed here)

    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
