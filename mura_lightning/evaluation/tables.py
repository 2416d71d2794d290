"""The MURA paper's table in the terminal: study-level metrics per body part and overall."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from mura_lightning.evaluation.metrics import metrics_by_body_part

INTERVAL_COLUMNS = {"kappa": "kappa", "auroc": "AUROC"}  # shown with their bounds
SHORT_COLUMNS = {"sensitivity": "sens", "specificity": "spec", "accuracy": "acc", "f1_abnormal": "F1 abn"}
SUMMARY_COLUMNS = {  # metric -> column header
    "kappa": "kappa",
    "auroc": "AUROC",
    "accuracy": "acc",
    "sensitivity": "sens",
    "specificity": "spec",
    "f1_abnormal": "F1 abn",
    "f1_normal": "F1 norm",
}


def print_metrics_table(
    values: dict[str, Any], stage: str, level: str = "study", console: Console | None = None
) -> None:
    """Print `{stage}/{level}/...` metrics as a table: one row per body part, then overall. With bootstrap bounds
    in `values`, kappa and AUROC read like the MURA paper's, `0.705 (0.680-0.729)` (within 80 columns; every
    bound is in metrics_by_bodypart.csv)."""
    frame = metrics_by_body_part(values, stage, level)
    bootstrap = values.get("bootstrap")
    bounded = bool(bootstrap) and any(column.endswith("_ci_low") for column in frame.columns)
    title = f"{stage} metrics, {level} level"
    if bounded:
        title += f" ({bootstrap['confidence']:.0%} patient-bootstrap intervals)"
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, pad_edge=False) if bounded else Table(title=title)
    columns = {**INTERVAL_COLUMNS, **SHORT_COLUMNS} if bounded else SUMMARY_COLUMNS
    table.add_column("body part", no_wrap=True)
    for header in columns.values():
        table.add_column(header, justify="right", no_wrap=True)
    for part, row in frame.iterrows():
        cells = [cell(row, name) if name in INTERVAL_COLUMNS else f"{row[name]:.3f}" for name in columns]
        table.add_row(part, *cells, style="bold" if part == "overall" else None)
    (console or Console()).print(table)


def cell(row, name: str) -> str:
    """A metric's value with three decimals, followed by its `(low-high)` bounds when the row has them."""
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{row[name]:.3f}"
    return f"{row[name]:.3f} ({low:.3f}-{high:.3f})"
