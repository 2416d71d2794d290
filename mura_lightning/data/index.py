"""Index of a MURA-v1.1 tree: one row per image, read from the official CSVs or by scanning folders."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

BODY_PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
OFFICIAL_SPLITS = ("train", "valid")
COLUMNS = ["path", "split", "body_part", "patient", "study", "view", "label"]
ON_ERROR_CHOICES = ("raise", "skip")

STUDY_DIR = re.compile(r"^study(\d+)_(positive|negative)$")
VIEW_NUMBER = re.compile(r"(\d+)$")
SHOWN_OFFENDERS = 5


class MuraDataError(MuraError, ValueError):
    """A MURA tree or CSV that does not match the official layout, with what to fix."""


@dataclass
class MuraIndex:
    """The indexed dataset: one row per image, where the rows came from, and what was left out."""

    frame: pd.DataFrame
    root: Path
    source: dict[str, str]
    skipped: Counter = field(default_factory=Counter)

    def describe_source(self) -> str:
        """Say which source each official split was read from, e.g. 'train: csv, valid: folders'."""
        return ", ".join(f"{split}: {src}" for split, src in self.source.items())


@dataclass(frozen=True)
class _ImageRow:
    relpath: str
    split: str
    body_part: str
    part_dir: str
    patient: str
    study_dir: str
    filename: str

    @property
    def study(self) -> str:
        """The study folder relative to the MURA root, spelled as on disk (`XR_Hand` stays `XR_Hand`)."""
        return f"{self.split}/{self.part_dir}/{self.patient}/{self.study_dir}"

    @property
    def view(self) -> int:
        match = VIEW_NUMBER.search(Path(self.filename).stem)
        return int(match.group(1)) if match else 0


def is_dataset_image(filename: str) -> bool:
    """True for a PNG that belongs to the dataset; False for AppleDouble `._*`, `.DS_Store` and non-PNG files."""
    return not filename.startswith(".") and filename.lower().endswith(".png")


def folder_label(study_dir: str) -> int | None:
    """The label a study folder name carries (`studyN_positive` -> 1, `studyN_negative` -> 0), else None."""
    match = STUDY_DIR.match(study_dir)
    if match is None:
        return None
    return 1 if match.group(2) == "positive" else 0


def body_part_of(folder: str) -> str | None:
    """The body part of an `XR_<PART>` folder name, lower case, or None when it is not one of MURA's seven."""
    if not folder.upper().startswith("XR_"):
        return None
    part = folder[3:].lower()
    return part if part in BODY_PARTS else None


def _parse_relpath(relpath: str, split: str) -> _ImageRow:
    """Split a path relative to MURA-v1.1 (`train/XR_ELBOW/patient00011/study1_negative/image1.png`)."""
    parts = relpath.strip("/").split("/")
    if len(parts) != 5 or parts[0] != split or body_part_of(parts[1]) is None:
        raise MuraDataError(
            f"path {relpath!r} does not follow the MURA layout "
            f"'{split}/XR_<PART>/patientNNNNN/studyN_<positive|negative>/imageN.png' "
            f"(PART one of {', '.join(p.upper() for p in BODY_PARTS)})"
        )
    return _ImageRow(relpath, split, body_part_of(parts[1]), parts[1], parts[2], parts[3], parts[4])


def _strip_top_folder(csv_path: str) -> str:
    """CSV paths start with the dataset folder (`MURA-v1.1/train/...`); return the part after it."""
    return csv_path.strip().split("/", 1)[1] if "/" in csv_path.strip() else csv_path.strip()


def _read_headerless(csv_file: Path, names: list[str]) -> pd.DataFrame:
    try:
        return pd.read_csv(csv_file, header=None, names=names, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise MuraDataError(f"cannot read {csv_file}: {err}. Restore the official file.") from err


def _study_labels_from_csv(csv_file: Path, split: str) -> dict[str, int]:
    """Study id -> label from `<split>_labeled_studies.csv`."""
    table = _read_headerless(csv_file, ["study", "label"])
    labels: dict[str, int] = {}
    for row in table.itertuples(index=False):
        if row.label not in ("0", "1"):
            raise MuraDataError(
                f"{csv_file}: study {row.study!r} has label {row.label!r}; labels must be 0 (normal) or 1 (abnormal)"
            )
        rel = _strip_top_folder(row.study).rstrip("/")
        labels[rel] = int(row.label)
    return labels


class _Problems:
    """Per-kind lists of offending paths, reported together at the end of indexing."""

    MESSAGES = {
        "missing_file": "listed in the CSV but not on disk",
        "unlabeled_study": "study has no label (no row in the labeled-studies CSV, or a folder name that is not "
        "studyN_positive / studyN_negative)",
        "label_mismatch": "label contradicts the study folder name",
        "unknown_folder": "folder is not part of the MURA layout",
    }

    def __init__(self) -> None:
        self.found: dict[str, dict[str, None]] = {kind: {} for kind in self.MESSAGES}

    def add(self, kind: str, offender: str) -> None:
        """Record an offender once, in the order first seen."""
        self.found[kind][offender] = None

    def report(self, on_error: str, skipped: Counter) -> None:
        """Raise one error naming the first offenders of each kind, or warn and count them under skip."""
        lines = []
        for kind, offenders in self.found.items():
            if offenders:
                shown = "; ".join(list(offenders)[:SHOWN_OFFENDERS])
                more = f" (and {len(offenders) - SHOWN_OFFENDERS} more)" if len(offenders) > SHOWN_OFFENDERS else ""
                lines.append(f"  {len(offenders)} {self.MESSAGES[kind]}: {shown}{more}")
        if not lines:
            return
        if on_error == "raise":
            raise MuraDataError(
                "the MURA tree has problems:\n" + "\n".join(lines) + "\nFix the files, or set data.on_error=skip "
                "to leave these out with a warning."
            )
        for kind, offenders in self.found.items():
            skipped[kind] += len(offenders)
        log.warning("left out (data.on_error=skip):\n%s", "\n".join(lines))


def _csv_rows(root: Path, split: str, problems: _Problems, skipped: Counter) -> Iterator[dict]:
    """Rows of one split from its two official CSVs."""
    labels = _study_labels_from_csv(root / f"{split}_labeled_studies.csv", split)
    images = _read_headerless(root / f"{split}_image_paths.csv", ["path"])
    for csv_path in images["path"]:
        relpath = _strip_top_folder(csv_path)
        if not is_dataset_image(Path(relpath).name):
            skipped["not_an_image"] += 1
            continue
        row = _parse_relpath(relpath, split)
        path = root / relpath
        label = labels.get(row.study)
        named = folder_label(row.study_dir)
        if not path.is_file():
            problems.add("missing_file", str(path))
        elif label is None:
            problems.add("unlabeled_study", str(root / row.study))
        elif named is not None and named != label:
            problems.add("label_mismatch", f"{root / row.study} (CSV says {label})")
        else:
            yield _row_dict(row, root, label)


def _folder_rows(root: Path, split: str, problems: _Problems, skipped: Counter) -> Iterator[dict]:
    """Rows of one split found by walking `<split>/XR_*/patient*/study*_<label>/`."""
    for part_dir in _sorted_dirs(root / split, problems, skipped):
        if body_part_of(part_dir.name) is None:
            problems.add("unknown_folder", str(part_dir))
            continue
        for patient_dir in _sorted_dirs(part_dir, problems, skipped):
            for study_dir in _sorted_dirs(patient_dir, problems, skipped):
                label = folder_label(study_dir.name)
                if label is None:
                    problems.add("unlabeled_study", str(study_dir))
                    continue
                for image in sorted(study_dir.iterdir()):
                    if image.is_file() and is_dataset_image(image.name):
                        relpath = image.relative_to(root).as_posix()
                        yield _row_dict(_parse_relpath(relpath, split), root, label)
                    else:
                        skipped["not_an_image"] += 1


def _sorted_dirs(folder: Path, problems: _Problems, skipped: Counter) -> list[Path]:
    """Sub-folders of `folder` in name order; stray files there are counted as skipped."""
    entries = sorted(folder.iterdir())
    for entry in entries:
        if not entry.is_dir():
            skipped["not_an_image"] += 1
    return [entry for entry in entries if entry.is_dir()]


def _row_dict(row: _ImageRow, root: Path, label: int) -> dict:
    return {
        "path": str(root / row.relpath),
        "split": row.split,
        "body_part": row.body_part,
        "patient": row.patient,
        "study": row.study,
        "view": row.view,
        "label": label,
    }


def _split_source(root: Path, split: str) -> str:
    """'csv' when both official CSVs of the split exist, 'folders' when neither does."""
    csvs = [root / f"{split}_image_paths.csv", root / f"{split}_labeled_studies.csv"]
    present = [csv.is_file() for csv in csvs]
    if all(present):
        return "csv"
    if any(present):
        have, lack = (csvs[0], csvs[1]) if present[0] else (csvs[1], csvs[0])
        raise MuraDataError(
            f"found {have} but not {lack}: restore the missing official CSV, or remove both to index "
            f"the {split} split by its folders"
        )
    if not (root / split).is_dir():
        raise MuraDataError(
            f"{root} has neither {split}_image_paths.csv nor a {split}/ folder; data.root must be the "
            "MURA-v1.1 folder (the one holding train/, valid/ and the official CSVs)"
        )
    return "folders"


def build_index(root: str | Path, on_error: str = "raise", splits: Iterable[str] = OFFICIAL_SPLITS) -> MuraIndex:
    """Index every image of the official `splits` of a MURA-v1.1 tree (`root` is the MURA-v1.1 folder).

    The official CSVs are the source of truth; a split without them is indexed from its folders, the label
    read from `studyN_positive|negative`. Files that are not dataset images are skipped and counted.
    Missing files, unlabeled studies and contradicting labels raise `MuraDataError` naming the first
    offenders, or with `on_error="skip"` are left out with a warning and counted.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise MuraDataError(f"data.on_error={on_error!r} is not one of {', '.join(ON_ERROR_CHOICES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MuraDataError(
            f"data.root={root} does not exist. Point data.root at the MURA-v1.1 folder, or generate a "
            "synthetic one: python -m mura_lightning.synthetic root=data/synthetic-MURA studies_per_part=120 seed=0"
        )
    problems, skipped, source, rows = _Problems(), Counter(), {}, []
    for split in splits:
        if split not in OFFICIAL_SPLITS:
            raise MuraDataError(f"split {split!r} is not one of MURA's: {', '.join(OFFICIAL_SPLITS)}")
        source[split] = _split_source(root, split)
        read = _csv_rows if source[split] == "csv" else _folder_rows
        rows.extend(read(root, split, problems, skipped))
    problems.report(on_error, skipped)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        raise MuraDataError(f"no images found under {root}; is data.root the MURA-v1.1 folder?")
    frame = frame.sort_values(["split", "body_part", "patient", "study", "view"], ignore_index=True)
    frame["view"] = frame["view"].astype("int64")
    frame["label"] = frame["label"].astype("int64")
    index = MuraIndex(frame=frame, root=root, source=source, skipped=skipped)
    log.info("indexed %d images under %s (%s)", len(frame), root, index.describe_source())
    return index


def resolve_body_parts(selection: str | Iterable[str]) -> list[str]:
    """Turn `all`, one name or a list of names into a sorted list of body parts; unknown names are an error."""
    names = [selection] if isinstance(selection, str) else list(selection)
    names = [str(name).strip().lower() for name in names]
    if names == ["all"]:
        return list(BODY_PARTS)
    unknown = [name for name in names if name not in BODY_PARTS]
    if unknown or not names:
        raise MuraDataError(f"unknown body part(s) {unknown or names}: choose 'all' or any of {', '.join(BODY_PARTS)}")
    return sorted(set(names))


def select_body_parts(frame: pd.DataFrame, selection: str | Iterable[str]) -> pd.DataFrame:
    """Rows of the chosen body parts; a selection with no images is an error naming what the index holds."""
    parts = resolve_body_parts(selection)
    chosen = frame[frame["body_part"].isin(parts)].reset_index(drop=True)
    if chosen.empty:
        held = ", ".join(sorted(frame["body_part"].unique()))
        raise MuraDataError(f"no images of {', '.join(parts)} in the index; it holds: {held}")
    return chosen
