"""A sweep's run folders read into typed records: each job's setup (backbone, body parts, overrides), its state
(ok, failed, pruned, unfinished, from the files io.py names), the first line of its error and its results.
summarize, the repeat groups and the search's report read jobs through here."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mura_lightning.cluster import slurm
from mura_lightning.data.index import BODY_PARTS, resolve_body_parts
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, FAILED, HYDRA_DIR, OK, PRUNED, PRUNED_FILE, RESULTS_FILE, UNFINISHED

UNKNOWN = "unknown"
ALL_PARTS = "all"
JOB_NUMBER = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class Job:
    """One run folder of a sweep (a training run, an evaluation or a search trial).

    Args:
        folder: the run folder.
        backbone: the model's backbone (`unknown` when neither results.json nor the config says).
        body_part: its body parts joined by `+`, or `all` for all seven.
        overrides: the command-line overrides it ran with (from `.hydra/overrides.yaml`).
        status: `ok` (results.json written), `failed` (error.txt, or an unreadable results.json), `pruned` (a
            search trial stopped early) or `unfinished`.
        error: the first line of its error (or the pruner's note), with the SLURM log when it has one.
        results: its results.json (empty unless it finished).
    """

    folder: Path
    backbone: str
    body_part: str
    overrides: tuple[str, ...]
    status: str
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The folder's name (`<n>_<overrides>` in a sweep)."""
        return self.folder.name

    @property
    def finished(self) -> bool:
        """Whether the job wrote its results."""
        return self.status == OK


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a multirun folder (those holding a `.hydra/` folder), in job-number order."""
    if not sweep_dir.is_dir():
        raise MuraError(f"{sweep_dir} is not a folder; pass a multirun folder such as outputs/multirun/<date>_<time>/")
    folders = [path for path in sweep_dir.iterdir() if (path / HYDRA_DIR).is_dir()]
    if not folders:
        raise MuraError(
            f"{sweep_dir} holds no job folders (sub-folders with a {HYDRA_DIR}/ folder); pass a multirun folder "
            "such as outputs/multirun/<date>_<time>/"
        )
    return sorted(folders, key=_job_order)


def _job_order(folder: Path) -> tuple[float, str]:
    match = JOB_NUMBER.match(folder.name)
    return (int(match.group(1)) if match else math.inf, folder.name)


def job_number(name: str) -> str:
    """The job number a sweep folder's name starts with (`3_model-resnet50` -> `3`); the name when it has none."""
    match = JOB_NUMBER.match(name)
    return match.group(1) if match else name


def first_error_line(text: str) -> str:
    """The first line of the error a training job left in error.txt: the last exception's message when the
    file holds a traceback, otherwise the file's first non-blank line."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    after_frames = (line for line in lines[starts[-1] + 1 :] if not line[0].isspace()) if starts else iter(lines)
    return next(after_frames, "").strip()


def read_results(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A job's results.json and, when it cannot be read, why; (None, None) when the job wrote none."""
    path = folder / RESULTS_FILE
    if not path.is_file():
        return None, None
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"cannot read {RESULTS_FILE}: {err}"
    if not isinstance(results, dict):
        return None, f"{RESULTS_FILE} holds no metrics (a {type(results).__name__}, not an object)"
    return results, None


def read_overrides(folder: Path) -> list[str]:
    """The command-line overrides a job ran with (from its .hydra/overrides.yaml; none when it is unreadable)."""
    try:
        return [str(item) for item in OmegaConf.load(folder / HYDRA_DIR / "overrides.yaml")]
    except (OSError, yaml.YAMLError, OmegaConfBaseException):
        return []


def job_setup(folder: Path, results: dict[str, Any] | None) -> tuple[str, list[str]]:
    """A job's backbone and body parts: from its results, else from its .hydra/config.yaml (unknown when that
    is unreadable)."""
    if results is not None:
        return str(results.get("model", UNKNOWN)), list(results.get("body_parts", []))
    try:
        config = OmegaConf.load(folder / HYDRA_DIR / "config.yaml")
        backbone = OmegaConf.select(config, "model.backbone.name", default=UNKNOWN)
        parts = OmegaConf.select(config, "data.body_parts", default=None)
        parts = OmegaConf.to_object(parts) if OmegaConf.is_config(parts) else parts
        return str(backbone), resolve_body_parts(parts) if parts else []
    except (OSError, yaml.YAMLError, OmegaConfBaseException, MuraError):
        return UNKNOWN, []


def body_part_label(parts: list[str]) -> str:
    """Body parts joined by '+', or 'all' for all seven."""
    if set(parts) == set(BODY_PARTS):
        return ALL_PARTS
    return "+".join(parts) or UNKNOWN


def read_job(folder: Path) -> Job:
    """The job in `folder`: its setup, state, first error line and results."""
    results, unreadable = read_results(folder)
    error_file = folder / ERROR_FILE
    if error_file.is_file():
        status, error = FAILED, first_error_line(error_file.read_text(errors="replace"))
    elif unreadable:
        status, error = FAILED, unreadable
    elif results is None and (folder / PRUNED_FILE).is_file():
        status, error = PRUNED, (folder / PRUNED_FILE).read_text(errors="replace").strip()
    else:
        status, error = (OK if results is not None else UNFINISHED), ""
    if status != OK and (log_file := slurm.recorded_log(folder)):
        error = f"{error} (SLURM log: {log_file})".lstrip()
    backbone, parts = job_setup(folder, results)
    return Job(folder, backbone, body_part_label(parts), tuple(read_overrides(folder)), status, error, results or {})


def read_sweep(sweep_dir: Path) -> list[Job]:
    """Every job of a multirun folder, in job-number order."""
    return [read_job(folder) for folder in job_folders(sweep_dir)]


LOCATION_KEYS = ("ckpt_path", "paths.", "data.root", "hydra.", "output", "report", "reporting.")  # where, not what


def training_folder(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint was written into (`<run>/checkpoints/<name>.ckpt`), when it is still there with
    its `.hydra/` folder; else None."""
    folder = Path(ckpt_path).parent.parent
    return folder if (folder / HYDRA_DIR).is_dir() else None


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def model_setting(folder: Path) -> tuple[str, list[str]]:
    """What a run or evaluate folder's model is: its backbone and the overrides it was trained with (for an
    evaluation, those of its first checkpoint's run, then its own), leaving out those that only say where files
    are (LOCATION_KEYS)."""
    results, _ = read_results(folder)
    backbone, _ = job_setup(folder, results)
    checkpoints = list((results or {}).get("ckpt_paths") or [])
    trained_in = training_folder(checkpoints[0]) if checkpoints else None
    overrides = [*(read_overrides(trained_in) if trained_in else []), *read_overrides(folder)]
    kept = [item for item in overrides if not _override_key(item).startswith(LOCATION_KEYS)]
    return backbone, list(dict.fromkeys(kept))


def run_labels(folders: list[str | Path]) -> dict[str, str]:
    """A short name for each folder, by what differs between them: its backbone, then the overrides not all of
    them share (`model=` ones only where the backbones agree), e.g. `densenet169` and `resnet50`, or `densenet169`
    and `densenet169 tta=hflip`; the folder's name is added where that leaves two alike. Keys are the folders as
    given."""
    settings = {str(folder): model_setting(Path(folder)) for folder in folders}
    several_backbones = len({backbone for backbone, _ in settings.values()}) > 1
    shared = set.intersection(*(set(overrides) for _, overrides in settings.values()))
    labels = {}
    for folder, (backbone, overrides) in settings.items():
        differing = [
            item
            for item in overrides
            if item not in shared and not (several_backbones and _override_key(item) == "model")
        ]
        labels[folder] = " ".join([backbone, *differing])
    named = list(labels.values())
    return {
        folder: label if named.count(label) == 1 else f"{label} {Path(folder).name}" for folder, label in labels.items()
    }
