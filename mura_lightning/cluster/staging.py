"""Staging folders that say who builds in them, so a build that was killed can be told from one still running.

A staging folder holds `owner.json`: the builder's host, boot id, process id and process start time. A later
build removes the staging folders whose builder is provably gone: same host, and the boot changed, or no process
has that id, or the process with that id started at another time (the id was reused). Folders of other hosts,
of live builders, or without a readable owner file are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# /proc/<pid>/stat fields, counted from 0 after the ")" that ends the command name: state (field 3), starttime (22)
STAT_STATE, STAT_START = 0, 19
ZOMBIE = "Z"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name; empty where that cannot be read (no /proc)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return stat.rsplit(")", 1)[-1].split() if stat else []


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot), or None where that cannot be read."""
    fields = _stat(pid)
    return fields[STAT_START] if len(fields) > STAT_START else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return not (fields and fields[STAT_STATE] == ZOMBIE)


def this_process() -> dict:
    """The owner record of the current process: host, boot id, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _read(BOOT_ID_FILE), "pid": pid, "start": _start_time(pid)}


def owner_is_gone(owner: dict) -> bool:
    """Whether the process an owner record names has provably ended (only decidable on its own host)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    boot_id = _read(BOOT_ID_FILE)
    if boot_id and owner.get("boot_id") and owner["boot_id"] != boot_id:
        return True
    if not _is_running(owner["pid"]):
        return True
    start = _start_time(owner["pid"])
    return bool(start and owner.get("start") and start != owner["start"])


def read_owner(folder: Path) -> dict | None:
    """A staging folder's owner record, or None when it has none or it cannot be read."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def remove_dead_staging(parent: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the folders in `parent` whose name matches `pattern` and whose owner is provably gone; returns
    them."""
    removed = []
    for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
        owner = read_owner(folder) if folder.is_dir() and pattern.fullmatch(folder.name) else None
        if owner is not None and owner_is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s: left by process %s on %s, which is gone", folder, owner["pid"], owner["host"])
            removed.append(folder)
    return removed


@contextmanager
def staging_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder `parent/<prefix><random>` holding this process's owner record, removed on the way out
    (whatever is left in it: a finished build renames it away first)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        (folder / OWNER_FILE).write_text(json.dumps(this_process()))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
