"""What a scored test writes, from training's final test and from evaluate alike: the per-image and per-study
prediction files, the patient-bootstrap intervals of the headline metrics, and the per-body-part tables."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mura_lightning.evaluation.bootstrap import METRICS, OVERALL, BootstrapSettings, intervals
from mura_lightning.io import write_atomically
from mura_lightning.metrics import LEVELS, PredictionTable, metrics_by_body_part, row_thresholds

IMAGE_FILE, STUDY_FILE = "predictions_images.csv", "predictions_studies.csv"
TABLE_FILES = {"study": "metrics_by_bodypart.csv", "image": "metrics_by_bodypart_image.csv"}
IMAGE_COLUMNS = ["path", "patient", "body_part", "study", "label", "prob"]
STUDY_COLUMNS = ["study", "patient", "body_part", "label", "prob", "pred"]
BOUNDS = ("ci_low", "ci_high")


def prediction_frames(
    images: PredictionTable, studies: PredictionTable, rows: pd.DataFrame, threshold: float | torch.Tensor
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-image (path, patient, body_part, study, label, prob) and per-study (study, patient, body_part,
    label, prob, pred) tables, with study folders relative to the MURA root; `pred` at `threshold` (one number,
    or one per BODY_PARTS entry). `rows` are the index rows the tables' image and study ids refer to."""
    by_image = rows.set_index("image_id")
    by_study = rows.drop_duplicates("study_id").set_index("study_id")
    image_frame = images.to_frame()
    for column in ("path", "patient", "study"):
        image_frame[column] = by_image.loc[image_frame["image_id"], column].to_numpy()
    study_frame = studies.to_frame()
    for column in ("patient", "study"):
        study_frame[column] = by_study.loc[study_frame["study"], column].to_numpy()
    study_frame["pred"] = (studies.probs > row_thresholds(threshold, studies.body_parts)).long().cpu().numpy()
    return image_frame[IMAGE_COLUMNS], study_frame[STUDY_COLUMNS]


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
    """Write the prediction files and the per-body-part tables (study level with the bootstrap intervals) of a
    scored stage into `out`; returns `values` with the intervals added, and the study frame."""
    image_frame, study_frame = prediction_frames(tables["image"], tables["study"], rows, threshold)
    write_atomically(out / IMAGE_FILE, lambda tmp: image_frame.to_csv(tmp, index=False))
    write_atomically(out / STUDY_FILE, lambda tmp: study_frame.to_csv(tmp, index=False))
    values = {**values, **interval_values(study_frame, settings, stage), "bootstrap": asdict(settings)}
    for level in LEVELS:
        table = metrics_by_body_part(values, stage, level)
        write_atomically(out / TABLE_FILES[level], lambda tmp, t=table: t.to_csv(tmp))
    return values, study_frame
