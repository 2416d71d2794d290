"""Train/val/test subsets by patient, and the class counts the loss weights come from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mura_lightning.data.index import MuraDataError

SUBSETS = ("train", "val", "test")


def _patient_strata(train_rows: pd.DataFrame) -> pd.Series:
    """Each patient's stratum: the (body part, label) held by most of their studies, ties broken by name."""
    studies = train_rows.drop_duplicates("study")[["patient", "body_part", "label"]]
    counts = studies.groupby(["patient", "body_part", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["patient", "n", "body_part", "label"], ascending=[True, False, True, True])
    first = counts.drop_duplicates("patient").set_index("patient")
    return first["body_part"] + "/" + first["label"].astype(str)


def assign_subsets(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Subset of each row: official `valid` -> `test`; official `train` split into `train`/`val` by patient.

    About `val_fraction` of the training patients go to `val`, stratified by body part and label
    (systematic sampling over patients ordered by stratum, then at random), reproducibly for a `seed`.
    No patient lands in two subsets.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MuraDataError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
    subsets = pd.Series("test", index=frame.index, dtype=object)
    train_rows = frame[frame["split"] == "train"]
    if train_rows.empty:
        raise MuraDataError("the index has no official train images to split into train and val")
    strata = _patient_strata(train_rows)
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"stratum": strata.values, "key": rng.random(len(strata))}, index=strata.index)
    order = order.sort_values(["stratum", "key"])
    position = np.arange(len(order))
    offset = rng.random()
    picked = np.floor((position + 1) * val_fraction + offset) > np.floor(position * val_fraction + offset)
    val_patients = set(order.index[picked])
    in_train = frame["split"] == "train"
    subsets[in_train] = np.where(frame.loc[in_train, "patient"].isin(val_patients), "val", "train")
    if not val_patients or len(val_patients) == len(order):
        raise MuraDataError(
            f"data.val_fraction={val_fraction} over {len(order)} training patients leaves the train or val "
            "subset empty; use more data or another val_fraction"
        )
    return subsets


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Normal and abnormal counts per body part, in images and in studies (index: body part)."""
    images = frame.groupby(["body_part", "label"]).size().unstack(fill_value=0)
    studies = frame.drop_duplicates("study").groupby(["body_part", "label"]).size().unstack(fill_value=0)
    table = pd.DataFrame(
        {
            "images_normal": images.get(0, 0),
            "images_abnormal": images.get(1, 0),
            "studies_normal": studies.get(0, 0),
            "studies_abnormal": studies.get(1, 0),
        }
    )
    return table.fillna(0).astype("int64").sort_index()
