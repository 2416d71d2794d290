"""Writing result files atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"  # a run's final metrics and what they belong to
ERROR_FILE = "error.txt"  # a failed run's traceback
PRUNED_FILE = "pruned.txt"  # a search trial stopped early by the pruner: why and at which epoch
HYDRA_DIR = ".hydra"  # a run's composed config and overrides, as Hydra writes them (and a search for its trials)
OK, FAILED, PRUNED, UNFINISHED = "ok", "failed", "pruned", "unfinished"  # a run's state, read from the files above


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it to `path`: readers never see a
    half-written file, and an interrupted write leaves any earlier `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _default_file_mode())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def _default_file_mode() -> int:
    """The permissions a plainly created file gets under the current umask (mkstemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
