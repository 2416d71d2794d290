"""The data behind a report: patients, studies and images per subset (train, val, test) and body part."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from mura_lightning.data.index import build_index, select_body_parts
from mura_lightning.data.inspect import count_table
from mura_lightning.data.splits import SUBSETS, assign_subsets
from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


def data_counts(test_images: pd.DataFrame, datamodule: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """Per subset and body part (and `all` per subset): patients, studies, images, normal and abnormal studies
    (`count_table`'s columns), with a note on where they come from. Test: the scored images (`test_images`, the
    image rows of a prediction file). Train and val: the official train split of the checkpoint's data
    (`datamodule`: its root, body parts and split settings) divided as training divided it; left out, and the note
    says why, when that data is not there."""
    test = test_images.assign(split="test")
    frames, note = [test], "test: the scored images"
    try:
        frames.insert(0, _training_subsets(datamodule))
        note = f"train and val: {datamodule['root']}, split as in training; {note}"
    except (KeyError, MuraError, OSError) as err:
        log.warning("train and val counts left out: %s", err)
        note = f"train and val counts left out ({err}); {note}"
    table = count_table(pd.concat(frames, ignore_index=True))
    order = {subset: i for i, subset in enumerate(SUBSETS)}
    return table.sort_index(level="split", key=lambda level: level.map(order), sort_remaining=False), note


def _training_subsets(datamodule: dict[str, Any]) -> pd.DataFrame:
    """The train and val rows of the official train split, as the datamodule of these settings divides them."""
    if "root" not in datamodule:
        raise KeyError("the checkpoint does not record its data settings")
    index = build_index(datamodule["root"], on_error=datamodule.get("on_error", "raise"), splits=(TRAIN_SPLIT,))
    rows = select_body_parts(index.frame, datamodule.get("body_parts", "all"))
    subsets = assign_subsets(
        rows,
        datamodule["val_fraction"],
        datamodule["seed"],
        num_folds=datamodule.get("num_folds"),
        fold=datamodule.get("fold"),
    )
    return rows.assign(split=subsets)
