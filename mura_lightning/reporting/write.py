"""One call for every folder a report can be written for: a training run, an evaluate output, a comparison."""

from __future__ import annotations

from pathlib import Path

from mura_lightning.reporting.build import ReportSettings, write_run_report
from mura_lightning.reporting.comparison import is_comparison, write_comparison_report


def write_report(folder: str | Path, settings: ReportSettings) -> list[Path]:
    """Write the report of `folder` into it (report.html, and MODEL_CARD.md for a scored model); the files'
    paths. A MuraError says what the folder lacks."""
    if is_comparison(folder):
        return write_comparison_report(folder, settings)
    return write_run_report(folder, settings)
