"""`python -m mura_lightning.data.inspect data.root=DIR [bodypart=...] [format=table|json]`: dataset counts."""

from __future__ import annotations

import json

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from mura_lightning.cli import hydra_app
from mura_lightning.data.index import MuraIndex, build_index, select_body_parts
from mura_lightning.errors import MuraError

COUNT_COLUMNS = ["patients", "studies", "images", "normal_studies", "abnormal_studies"]


def count_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per official split x body part, plus a total per split: patients, studies, images, normal/abnormal studies."""
    studies = frame.drop_duplicates("study")
    per_part = pd.DataFrame(
        {
            "patients": frame.groupby(["split", "body_part"])["patient"].nunique(),
            "studies": studies.groupby(["split", "body_part"]).size(),
            "images": frame.groupby(["split", "body_part"]).size(),
            "normal_studies": studies[studies["label"] == 0].groupby(["split", "body_part"]).size(),
            "abnormal_studies": studies[studies["label"] == 1].groupby(["split", "body_part"]).size(),
        }
    )
    totals = pd.DataFrame(
        {
            "patients": frame.groupby("split")["patient"].nunique(),
            "studies": studies.groupby("split").size(),
            "images": frame.groupby("split").size(),
            "normal_studies": studies[studies["label"] == 0].groupby("split").size(),
            "abnormal_studies": studies[studies["label"] == 1].groupby("split").size(),
        }
    )
    totals.index = pd.MultiIndex.from_product([totals.index, ["all"]], names=["split", "body_part"])
    table = pd.concat([per_part, totals]).fillna(0).astype("int64")[COUNT_COLUMNS]
    return table.sort_index(level=["split", "body_part"], key=lambda level: level.map(_part_order))


def _part_order(value: str) -> str:
    return "~" if value == "all" else value


def report(index: MuraIndex, frame: pd.DataFrame) -> dict:
    """The inspect report as plain data: root, source, skipped counts and the count rows."""
    rows = count_table(frame).reset_index().to_dict(orient="records")
    return {
        "root": str(index.root),
        "source": index.source,
        "skipped": dict(sorted(index.skipped.items())),
        "counts": rows,
    }


def print_table(data: dict, console: Console) -> None:
    """Print the report as a rich table with the source and skipped counts under it."""
    table = Table(title=f"MURA at {data['root']}")
    columns = ["split", "body_part", *COUNT_COLUMNS]
    for column in columns:
        header = column.replace("_studies", "").replace("_", " ")
        table.add_column(header, justify="left" if column in ("split", "body_part") else "right")
    for row in data["counts"]:
        cells = [f"{row[c]:,}" if c in COUNT_COLUMNS else row[c] for c in columns]
        table.add_row(*cells, style="bold" if row["body_part"] == "all" else None)
    console.print(table)
    console.print("normal / abnormal count studies")
    console.print("source: " + ", ".join(f"{split} from {src}" for split, src in data["source"].items()))
    skipped = ", ".join(f"{count} {reason}" for reason, count in data["skipped"].items()) or "nothing"
    console.print(f"skipped: {skipped}")


@hydra_app("inspect")
def main(cfg: DictConfig) -> None:
    """Index data.root and print its counts per split and body part."""
    index = build_index(cfg.data.root, on_error=cfg.data.on_error)
    frame = select_body_parts(index.frame, cfg.data.body_parts)
    data = report(index, frame)
    if cfg.format == "json":
        print(json.dumps(data, indent=2))
    elif cfg.format == "table":
        print_table(data, Console())
    else:
        raise MuraError(f"format={cfg.format!r} is not one of: table, json")


if __name__ == "__main__":
    main()
