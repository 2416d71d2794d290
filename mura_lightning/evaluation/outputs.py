"""What a scored stage writes, from training's final validation and test and from evaluate alike: the prediction
file (images and studies), the patient-bootstrap intervals of the headline metrics, and the per-body-part tables;
the reader of a folder's study predictions (compare, summarize); and the official MURA submission file (evaluate,
predict)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import COLUMNS as BOOTSTRAP_COLUMNS
from mura_lightning.evaluation.bootstrap import METRICS, OVERALL, BootstrapSettings, intervals
from mura_lightning.evaluation.metrics import LEVELS, PredictionTable, metrics_by_body_part, row_thresholds
from mura_lightning.io import write_atomically, write_text_atomic

TABLE_FILES = {"study": "metrics_by_bodypart.csv", "image": "metrics_by_bodypart_image.csv"}
PREDICTION_COLUMNS = ["level", "path", "study", "patient", "body_part", "label", "prob", "pred"]
BOUNDS = ("ci_low", "ci_high")
TEXT_COLUMNS = {"level": str, "path": str, "study": str, "patient": str, "body_part": str}


def predictions_file(stage: str) -> str:
    """The name of a stage's prediction file: `predictions_val.csv` (out-of-fold in cross-validation) or
    `predictions_test.csv`."""
    return f"predictions_{stage}.csv"


def prediction_frame(
    images: PredictionTable, studies: PredictionTable, rows: pd.DataFrame, threshold: float | torch.Tensor
) -> pd.DataFrame:
    """One row per image (`level` image, `path` the image) and per study (`level` study, `path` the study
    folder), with study (relative to the MURA root), patient, body_part, label, prob and `pred` decided at
    `threshold` (one number, or one per BODY_PARTS entry). `rows` are the index rows the tables' image and
    study ids refer to."""
    by_image = rows.set_index("image_id")
    by_study = rows.drop_duplicates("study_id").set_index("study_id")
    image_frame = images.to_frame()
    for column in ("path", "patient", "study"):
        image_frame[column] = by_image.loc[image_frame["image_id"], column].to_numpy()
    image_frame["pred"] = (images.probs > row_thresholds(threshold, images.body_parts)).long().cpu().numpy()
    study_frame = studies.to_frame()
    for column in ("patient", "study"):
        study_frame[column] = by_study.loc[study_frame["study"], column].to_numpy()
    study_frame["path"] = study_frame["study"]
    study_frame["pred"] = (studies.probs > row_thresholds(threshold, studies.body_parts)).long().cpu().numpy()
    frames = [frame.assign(level=level) for level, frame in (("image", image_frame), ("study", study_frame))]
    return pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS]


def write_predictions(
    out: Path, tables: dict[str, PredictionTable], rows: pd.DataFrame, threshold: float | torch.Tensor, stage: str
) -> pd.DataFrame:
    """Write a stage's prediction file (see `prediction_frame`) into `out`; returns its study rows."""
    frame = prediction_frame(tables["image"], tables["study"], rows, threshold)
    write_atomically(out / predictions_file(stage), lambda tmp: frame.to_csv(tmp, index=False))
    return frame[frame["level"] == "study"].reset_index(drop=True)


def read_study_predictions(folder: str | Path, stage: str = "test") -> pd.DataFrame:
    """The study rows of a run or evaluate folder's prediction file for `stage`, checked: the columns study,
    patient, body_part, label, prob, pred and one row per study."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MuraError(f"{folder} is not a folder: give a training run or an evaluate output folder")
    path = folder / predictions_file(stage)
    if not path.is_file():
        writers = (
            "every training run"
            if stage == "val"
            else "`python -m mura_lightning.evaluate ckpt_path=...` or a training run with a test"
        )
        raise MuraError(f"{path} does not exist: {writers} writes it")
    try:
        frame = pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False, na_values={"prob": [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MuraError(f"{path} cannot be read as a CSV: {err}") from err
    needed = ["level", "study", *BOOTSTRAP_COLUMNS]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise MuraError(f"{path} lacks the columns {missing}; it needs {', '.join(needed)}")
    frame = frame[frame["level"] == "study"].reset_index(drop=True)
    repeated = frame["study"][frame["study"].duplicated()]
    if len(repeated):
        raise MuraError(f"{path} lists {len(repeated)} studies twice, e.g. {repeated.iloc[0]}")
    return frame


def interval_values(study_frame: pd.DataFrame, settings: BootstrapSettings, stage: str) -> dict[str, float]:
    """The patient-bootstrap bounds of the study-level metrics (see evaluation.bootstrap), named like the metrics:
    `{stage}/study/{metric}_ci_low` and `_ci_high` overall, and `.../{body_part}` for each body part."""
    table = intervals(study_frame, samples=settings.samples, confidence=settings.confidence, seed=settings.seed)
    values = {}
    for part, row in table.iterrows():
        suffix = "" if part == OVERALL else f"/{part}"
        for metric in METRICS:
            for bound in BOUNDS:
                values[f"{stage}/study/{metric}_{bound}{suffix}"] = float(row[f"{metric}_{bound}"])
    return values


def write_scored_test(
    out: Path,
    values: dict[str, Any],
    tables: dict[str, PredictionTable],
    rows: pd.DataFrame,
    threshold: float | torch.Tensor,
    settings: BootstrapSettings,
    stage: str = "test",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Write the prediction file and the per-body-part tables (study level with the bootstrap intervals) of a
    scored stage into `out`; returns `values` with the intervals added, and the study rows."""
    study_frame = write_predictions(out, tables, rows, threshold, stage)
    values = {**values, **interval_values(study_frame, settings, stage), "bootstrap": asdict(settings)}
    for level in LEVELS:
        table = metrics_by_body_part(values, stage, level)
        write_atomically(out / TABLE_FILES[level], lambda tmp, t=table: t.to_csv(tmp))
    return values, study_frame


def write_submission(path: Path, study_folders: Iterable[str], preds: Iterable[int]) -> None:
    """The official MURA submission file: headerless `MURA-v1.1/valid/XR_.../studyN_.../,label` rows."""
    rows = "".join(f"{folder}/,{int(pred)}\n" for folder, pred in zip(study_folders, preds, strict=True))
    write_text_atomic(path, rows)
