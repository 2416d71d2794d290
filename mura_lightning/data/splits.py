"""Train/val/test subsets by patient (a held-out fraction, or one of K folds), and the class counts the loss
weights come from."""

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


def _shuffled_by_stratum(strata: pd.Series, rng: np.random.Generator) -> pd.Series:
    """The patients' strata ordered by stratum, and at random within each stratum."""
    order = pd.DataFrame({"stratum": strata.values, "key": rng.random(len(strata))}, index=strata.index)
    return order.sort_values(["stratum", "key"])["stratum"]


def holdout_patients(strata: pd.Series, val_fraction: float, seed: int) -> set:
    """About `val_fraction` of the patients, stratified (systematic sampling over patients ordered by stratum,
    then at random). Every stratum of two or more patients keeps at least one patient on each side, so each
    body part's val holds both labels whenever its training patients allow it."""
    rng = np.random.default_rng(seed)
    order = _shuffled_by_stratum(strata, rng)
    position = np.arange(len(order))
    offset = rng.random()
    picked = pd.Series(
        np.floor((position + 1) * val_fraction + offset) > np.floor(position * val_fraction + offset),
        index=order.index,
    )
    for _, members in order.groupby(order, sort=False):
        chosen = picked[members.index]
        if len(members) >= 2 and not chosen.any():
            picked[members.index[0]] = True
        elif len(members) >= 2 and chosen.all():
            picked[members.index[-1]] = False
    return set(picked.index[picked])


def patient_folds(strata: pd.Series, num_folds: int, seed: int) -> pd.Series:
    """Each patient's fold in [0, num_folds): patients ordered by stratum (at random within it, by `seed`) are
    dealt to the folds in turn, so every stratum's folds differ by at most one patient."""
    if num_folds < 2:
        raise MuraDataError(f"data.num_folds={num_folds}: cross-validation needs at least 2 folds")
    sizes = strata.value_counts()
    if num_folds > sizes.min():
        raise MuraDataError(_too_few_patients(sizes, num_folds))
    rng = np.random.default_rng(seed)
    order = _shuffled_by_stratum(strata, rng)
    start = int(rng.integers(num_folds))
    return pd.Series((np.arange(len(order)) + start) % num_folds, index=order.index)


def _too_few_patients(sizes: pd.Series, num_folds: int) -> str:
    """Why `num_folds` folds cannot each hold every stratum (`sizes`: training patients per `part/label`
    stratum), and what would work: a smaller K (when one of at least 2 exists), more studies per body part, or
    leaving out the body parts with too few patients."""
    smallest = int(sizes.min())
    parts = sizes.groupby(sizes.index.str.split("/").str[0]).min()
    short, enough = sorted(parts.index[parts < num_folds]), sorted(parts.index[parts >= num_folds])
    remedies = (
        [f"data.num_folds={smallest}" + (" (or fewer, down to 2)" if smallest > 2 else "")] if smallest >= 2 else []
    )
    remedies.append(
        f"a tree with at least {num_folds} training patients of each label in each body part (more studies per "
        "body part; data.synthetic.studies_per_part=N for a synthetic one)"
    )
    if enough:
        remedies.append(f"fewer body parts: bodypart=[{','.join(enough)}] leaves out {', '.join(short)}")
    return (
        f"data.num_folds={num_folds} needs {num_folds} training patients in each body part and label, so that each "
        f"fold holds them all; {sizes.idxmin()} (body part/label) has {smallest}. What would work: "
        + "; or ".join(remedies)
    )


def assign_subsets(
    frame: pd.DataFrame, val_fraction: float, seed: int, *, num_folds: int | None = None, fold: int | None = None
) -> pd.Series:
    """Subset of each row: official `valid` -> `test`; official `train` split into `train`/`val` by patient,
    stratified by body part and label, reproducibly for a `seed`. No patient lands in two subsets.

    Without folds, about `val_fraction` of the training patients go to `val` (`holdout_patients`). With
    `num_folds` K, the training patients are dealt into K folds (`patient_folds`) and fold `fold` is `val`.
    """
    if (num_folds is None) != (fold is None):
        raise MuraDataError(
            f"data.num_folds={num_folds} with data.fold={fold}: cross-validation needs both (fold i of K, "
            "0 <= i < K, e.g. data.num_folds=5 data.fold=0), and the held-out split neither"
        )
    if num_folds is None and not 0.0 < val_fraction < 1.0:
        raise MuraDataError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
    if num_folds is not None and not 0 <= fold < num_folds:
        raise MuraDataError(f"data.fold={fold} is not a fold of data.num_folds={num_folds}: use 0 to {num_folds - 1}")
    subsets = pd.Series("test", index=frame.index, dtype=object)
    train_rows = frame[frame["split"] == "train"]
    if train_rows.empty:
        raise MuraDataError("the index has no official train images to split into train and val")
    strata = _patient_strata(train_rows)
    if num_folds is None:
        val_patients = holdout_patients(strata, val_fraction, seed)
        setting = f"data.val_fraction={val_fraction}"
    else:
        folds = patient_folds(strata, num_folds, seed)
        val_patients = set(folds.index[folds == fold])
        setting = f"data.num_folds={num_folds}"
    in_train = frame["split"] == "train"
    subsets[in_train] = np.where(frame.loc[in_train, "patient"].isin(val_patients), "val", "train")
    if not val_patients or len(val_patients) == len(strata):
        raise MuraDataError(
            f"{setting} over {len(strata)} training patients leaves the train or val subset empty; use more data "
            "or another setting"
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
