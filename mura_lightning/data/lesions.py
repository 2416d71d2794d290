"""Lesion boxes of synthetic MURA (`lesions.csv` beside the MURA-v1.1 folder), for localisation scores and for
drawing on CAMs, and which views of its abnormal studies show their lesion."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mura_lightning.errors import MuraError

LESIONS_FILE = "lesions.csv"
LESION_COLUMNS = ["path", "kind", "x0", "y0", "x1", "y1"]


def read_lesion_rows(root: str | Path) -> pd.DataFrame | None:
    """Every row of the lesions.csv of the tree whose MURA-v1.1 folder is `root`, with absolute image paths: a
    row per lesion with its box (x0, y0, x1, y1 in pixels of the original image, x1/y1 exclusive), and a row
    without a box (NaN) per view of an abnormal study that does not show its lesion; None when the tree has no
    lesions.csv."""
    root = Path(root)
    path = root.parent / LESIONS_FILE
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    if list(rows.columns) != LESION_COLUMNS:
        raise MuraError(f"{path} must have the columns {','.join(LESION_COLUMNS)}, not {','.join(rows.columns)}")
    rows["path"] = [str(root / relative.split("/", 1)[1]) for relative in rows["path"]]
    return rows


def read_lesion_boxes(root: str | Path) -> pd.DataFrame | None:
    """The boxes of every lesion of the tree whose MURA-v1.1 folder is `root` (the rows of `read_lesion_rows`
    with a box); None when the tree has no lesions.csv."""
    rows = read_lesion_rows(root)
    return None if rows is None else rows.dropna(subset=["x0"]).reset_index(drop=True)


def lesion_boxes_by_path(boxes: pd.DataFrame | None) -> dict[str, list[tuple[float, float, float, float]]]:
    """`read_lesion_boxes`' table as image path -> its boxes (x0, y0, x1, y1); empty for None."""
    if boxes is None:
        return {}
    grouped: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in boxes.itertuples(index=False):
        grouped.setdefault(row.path, []).append((row.x0, row.y0, row.x1, row.y1))
    return grouped


def scale_boxes(
    boxes: dict[str, list[tuple[float, float, float, float]]],
    paths: Iterable[str],
    sizes: Iterable[tuple[int, int]],
    shape: tuple[int, int],
) -> list[list[tuple[float, float, float, float]]]:
    """Each image's boxes, from its original (height, width) in `sizes` to a grid of (height, width) `shape`."""
    scaled = []
    for path, (height, width) in zip(paths, sizes, strict=True):
        sy, sx = shape[0] / height, shape[1] / width
        scaled.append([(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes.get(path, [])])
    return scaled
