"""Which process wrote which file: `audited_env` gives the processes a test starts a start-up hook
(`sitecustomize.py` here) that records the files each writes under a folder, and `writers` reads the records back,
so a test can show that only rank 0 of a distributed run wrote the run's files."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

HOOK_FOLDER = Path(__file__).resolve().parent


@dataclass
class Writer:
    """One process that started with the hook: its SLURM rank (None outside a SLURM task), node, restart count
    of its job, and the files it wrote, in order (a file once per open for writing or rename into place)."""

    rank: int | None
    node: str | None
    restarts: int
    files: list[Path] = field(default_factory=list)


def audited_env(root: Path, records: Path) -> dict[str, str]:
    """This process's environment for a child whose writes under `root` are recorded in `records`, with this
    Python's folder first on PATH (as an activated virtual environment puts it, for `python` in a SLURM script)."""
    records.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(filter(None, [str(HOOK_FOLDER), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MURA_WRITE_AUDIT_ROOT": str(root),
        "MURA_WRITE_AUDIT_DIR": str(records),
    }


def writers(records: Path) -> list[Writer]:
    """Every recorded process, in no particular order."""
    found = []
    for path in records.glob("*.jsonl"):
        first, *lines = [json.loads(line) for line in path.read_text().splitlines()]
        rank = None if first["rank"] is None else int(first["rank"])
        found.append(Writer(rank, first["node"], first["restarts"], [Path(line["path"]) for line in lines]))
    return found
