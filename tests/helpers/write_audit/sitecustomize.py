"""Imported at start-up by the Python processes a test starts with `audited_env` (this folder first on their
PYTHONPATH): records every file a process opens for writing, or renames into place, under MURA_WRITE_AUDIT_ROOT,
one JSON line each, in a file of its own under MURA_WRITE_AUDIT_DIR whose first line says who wrote (SLURM rank,
node, restart count). Lines are written as they happen, so a process SLURM kills leaves what it wrote."""

from __future__ import annotations

import json
import os
import sys
import time

WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _watch(root: str, folder: str) -> None:
    record = os.open(
        os.path.join(folder, f"{os.getpid()}-{time.time_ns()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )

    def note(fields: dict) -> None:
        os.write(record, (json.dumps(fields) + "\n").encode())

    def written(path: object) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.abspath(os.fsdecode(path))
            if full.startswith(root):
                note({"path": full})

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[2], int) and args[2] & WRITING:
            written(args[0])
        elif event == "os.rename":
            written(args[1])

    note(
        {
            "rank": os.environ.get("SLURM_PROCID"),
            "node": os.environ.get("SLURMD_NODENAME"),
            "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        }
    )
    sys.addaudithook(hook)


if os.environ.get("MURA_WRITE_AUDIT_ROOT") and os.environ.get("MURA_WRITE_AUDIT_DIR"):
    _watch(os.path.abspath(os.environ["MURA_WRITE_AUDIT_ROOT"]), os.environ["MURA_WRITE_AUDIT_DIR"])
