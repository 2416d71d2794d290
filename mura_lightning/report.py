"""The MURA paper's table in the terminal: study-level metrics per body part and overall."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from mura_lightning.metrics import metrics_by_body_part

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
    """Print `{stage}/{level}/...` metrics as a table: one row per body part, then overall."""
    frame = metrics_by_body_part(values, stage, level)
    table = Table(title=f"{stage} metrics, {level} level")
    table.add_column("body part")
    for header in SUMMARY_COLUMNS.values():
        table.add_column(header, justify="right")
    for part, row in frame.iterrows():
        cells = [f"{row[name]:.3f}" for name in SUMMARY_COLUMNS]
        table.add_row(part, *cells, style="bold" if part == "overall" else None)
    (console or Console()).print(table)
