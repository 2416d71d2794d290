"""Errors meant for people: each says what was wrong, with the path or value, and what to do."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

ReturnT = TypeVar("ReturnT")
USER_ERROR_EXIT_CODE = 2


class MuraError(Exception):
    """A problem the user can fix: bad data, a bad setting, a missing file."""


class ImageDecodeError(MuraError, OSError):
    """A file that cannot be decoded as an image, with its path (here so both PNG and DICOM decoding raise it)."""


def exit_on_user_error(task: Callable[..., ReturnT]) -> Callable[..., ReturnT]:
    """Wrap an entry point so a MuraError ends it with its message and exit code 2 instead of a traceback."""

    @functools.wraps(task)
    def wrapped(*args, **kwargs) -> ReturnT:
        try:
            return task(*args, **kwargs)
        except MuraError as err:
            log.error("error: %s", err)
            raise SystemExit(USER_ERROR_EXIT_CODE) from err

    return wrapped
