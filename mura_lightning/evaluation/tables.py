"""Scores as text: numbers, intervals and spreads to three decimals, markdown and rich tables of DataFrames, and the
MURA paper's table of study-level metrics per body part in the terminal. summarize, compare, repeats and the
train and evaluate printouts all format through here, so a number reads the same everywhere."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mura_lightning.evaluation.metrics import metrics_by_body_part

DECIMALS = 3
MIN_COLUMN_WIDTH = DECIMALS + 2  # terminal characters, enough for a number such as 0.667
CELL_PADDING = 0  # the box already puts a space between columns

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
        cells = [
            interval_text(row[name], row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high"), missing="nan")
            if name in INTERVAL_COLUMNS
            else number_text(row[name], missing="nan")
            for name in columns
        ]
        table.add_row(part, *cells, style="bold" if part == "overall" else None)
    (console or Console()).print(table)


def as_number(value: Any) -> float:
    """`value` as a float when it is a number (not a bool), else NaN: what a results.json entry holds as a metric."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def number_text(value: Any, missing: str = "") -> str:
    """A number to three decimals; `missing` for NaN or None."""
    return missing if value is None or pd.isna(value) else f"{value:.{DECIMALS}f}"


def bounds_text(low: Any, high: Any) -> str:
    """`low-high`, an interval's bounds; "" when either is missing."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"{number_text(low)}-{number_text(high)}"


def interval_text(value: Any, low: Any, high: Any, missing: str = "") -> str:
    """`value (low-high)` as the MURA paper writes it; the value alone when a bound is missing, `missing` when the
    value is."""
    if value is None or pd.isna(value):
        return missing
    bounds = bounds_text(low, high)
    return f"{number_text(value)} ({bounds})" if bounds else number_text(value)


def spread_text(mean: float, sd: float) -> str:
    """`mean ± sd` (only the mean when sd is NaN, a single repeat; empty when there is no mean)."""
    if math.isnan(mean):
        return ""
    return number_text(mean) if math.isnan(sd) else f"{number_text(mean)} ± {number_text(sd)}"


def cell_text(value: Any) -> str:
    """A table cell: floats to three decimals (empty for NaN), anything else as text."""
    return number_text(value) if isinstance(value, float) else str(value)


def column_headers(columns: list[str], names: Mapping[str, str]) -> list[str]:
    """Headers for `columns`: the short name in `names` where it has one, underscores as spaces."""
    return [names.get(column, column).replace("_", " ") for column in columns]


def markdown_table(frame: pd.DataFrame, names: Mapping[str, str] | None = None) -> str:
    """A DataFrame (its columns, not its index) as a GitHub markdown table, numbers to three decimals; `names`
    gives short headers for some columns."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    rows = [line([cell_text(value) for value in row]) for row in frame.itertuples(index=False)]
    headers = column_headers(list(frame.columns), names or {})
    return "\n".join([line(headers), line(["---"] * len(frame.columns)), *rows])


def rich_table(
    frame: pd.DataFrame, title: str, shrink: tuple[str, ...] = (), names: Mapping[str, str] | None = None
) -> Table:
    """A DataFrame (its columns) as a rich table, numbers to three decimals, cells shown verbatim (no markup), one
    line per row: where the console is too narrow, the `shrink` columns give up their width first (their cells
    cut short with '…'), then all columns alike; headers and numbers keep their width. `names` gives short
    headers for some columns."""
    table = Table(title=title, box=box.SIMPLE_HEAD, min_width=len(title), padding=CELL_PADDING, pad_edge=False)
    for column, header in zip(frame.columns, column_headers(list(frame.columns), names or {}), strict=True):
        numeric = pd.api.types.is_float_dtype(frame[column])
        table.add_column(
            header,
            justify="right" if numeric else "left",
            no_wrap=column not in shrink,
            overflow="ellipsis",
            min_width=max(len(header), MIN_COLUMN_WIDTH) if numeric else None,
        )
    for row in frame.itertuples(index=False):
        table.add_row(*(Text(cell_text(value), no_wrap=True, overflow="ellipsis") for value in row))
    return table
