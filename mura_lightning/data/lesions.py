"""Lesion boxes of synthetic MURA (`lesions.csv` beside the MURA-v1.1 folder), for localisation scores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura_lightning.errors import MuraError

LESIONS_FILE = "lesions.csv"
LESION_COLUMNS = ["path", "kind", "x0", "y0", "x1", "y1"]


def read_lesion_boxes(root: str | Path) -> pd.DataFrame | None:
    """The boxes (x0, y0, x1, y1 in pixels of the original image, x1/y1 exclusive) of every lesion of the tree
    whose MURA-v1.1 folder is `root`, with absolute image paths; None when the tree has no lesions.csv."""
    root = Path(root)
    path = root.parent / LESIONS_FILE
    if not path.is_file():
        return None
    boxes = pd.read_csv(path)
    if list(boxes.columns) != LESION_COLUMNS:
        raise MuraError(f"{path} must have the columns {','.join(LESION_COLUMNS)}, not {','.join(boxes.columns)}")
    boxes["path"] = [str(root / relative.split("/", 1)[1]) for relative in boxes["path"]]
    return boxes
