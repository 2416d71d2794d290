"""Progress of long loops: a live Rich bar on a terminal, plain log lines where a live display shows nothing
(SLURM logs, `| tee`, CI).

    with progress("caching 1000 images", total=1000, unit="images") as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))

    for item in track(items, "predicting", total=len(items)):
        ...

In plain mode a line is logged at most every `interval_s` seconds (or every `every_n` items when given), and a
final line when the loop ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from rich.console import Console
from rich.progress import Progress

from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

AUTO, RICH, PLAIN = "auto", "rich", "plain"
MODES = (AUTO, RICH, PLAIN)
PLAIN_INTERVAL_S = 10.0  # seconds between plain progress lines
ItemT = TypeVar("ItemT")


class Reporter(Protocol):
    """What a loop reports its progress to."""

    def advance(self, count: int = 1) -> None:
        """Count `count` more items done."""


def stdout_is_live() -> bool:
    """Whether stdout shows a live display (a terminal or Jupyter, as Rich sees it)."""
    console = Console()
    return (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter


def resolve_mode(mode: str) -> str:
    """`rich` or `plain` for a mode of auto | rich | plain: auto is rich when stdout is live, plain otherwise."""
    if mode not in MODES:
        raise MuraError(f"progress mode {mode!r} is not one of: {', '.join(MODES)}")
    if mode == AUTO:
        return RICH if stdout_is_live() else PLAIN
    return mode


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS, or '?' when unknown (infinite or not a number)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def time_left(elapsed: float, done: float, total: float | None) -> float:
    """Seconds left at the average rate so far; infinity when the total or the rate is unknown."""
    if not total or not done or not math.isfinite(total):
        return math.inf
    return elapsed / done * max(total - done, 0)


class PlainProgress:
    """Progress as log lines: `description: done/total (pct), rate unit/s, H:MM:SS left`, then a final line."""

    def __init__(
        self,
        description: str,
        total: int | None = None,
        unit: str = "items",
        interval_s: float = PLAIN_INTERVAL_S,
        every_n: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.interval_s, self.every_n, self.clock = interval_s, every_n, clock
        self.done = 0
        self.start = self._last_time = clock()
        self._last_done = 0

    def advance(self, count: int = 1) -> None:
        """Count `count` more items done; log a line when enough time (or enough items) passed since the last."""
        self.done += count
        if self.total is not None and self.done >= self.total:
            return
        now = self.clock()
        due = now - self._last_time >= self.interval_s
        if self.every_n:
            due = due or self.done - self._last_done >= self.every_n
        if due:
            self._last_time, self._last_done = now, self.done
            elapsed = now - self.start
            left = format_duration(time_left(elapsed, self.done, self.total))
            log.info("%s: %s, %s, %s left", self.description, self._count(), self._rate(elapsed), left)

    def finish(self) -> None:
        """Log the final line: how many items in how long."""
        elapsed = self.clock() - self.start
        log.info("%s: %s in %s (%s)", self.description, self._count(), format_duration(elapsed), self._rate(elapsed))

    def stop(self) -> None:
        """Log where an interrupted loop stopped."""
        elapsed = self.clock() - self.start
        log.info("%s: stopped at %s after %s", self.description, self._count(), format_duration(elapsed))

    def _count(self) -> str:
        if not self.total:
            return str(self.done)
        return f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"

    def _rate(self, elapsed: float) -> str:
        return f"{self.done / elapsed:.1f} {self.unit}/s" if elapsed > 0 else f"? {self.unit}/s"


class _RichReporter:
    def __init__(self, bar: Progress, task) -> None:
        self.bar, self.task = bar, task

    def advance(self, count: int = 1) -> None:
        self.bar.advance(self.task, count)


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "items",
    mode: str = AUTO,
    interval_s: float = PLAIN_INTERVAL_S,
    every_n: int | None = None,
) -> Iterator[Reporter]:
    """Report a loop's progress through the yielded object's `advance(count)`: a Rich bar when `mode` resolves
    to rich, plain log lines (at most every `interval_s` seconds or every `every_n` items, and a final line)
    when it resolves to plain."""
    if resolve_mode(mode) == RICH:
        with Progress() as bar:
            yield _RichReporter(bar, bar.add_task(description, total=total))
        return
    plain = PlainProgress(description, total, unit, interval_s, every_n)
    try:
        yield plain
    except BaseException:
        plain.stop()
        raise
    plain.finish()


def track(
    items: Iterable[ItemT],
    description: str,
    total: int | None = None,
    **settings,
) -> Iterator[ItemT]:
    """Yield `items`, reporting one step per item (settings as for `progress`; total defaults to len(items))."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress(description, total, **settings) as bar:
        for item in items:
            yield item
            bar.advance()
