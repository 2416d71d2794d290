"""The report of a `compare` folder: the forest plot and the tables of B - A with intervals, the models named by
what differs between them, in one self-contained `report.html`."""

from __future__ import annotations

import logging
from pathlib import Path

import markdown
import matplotlib.pyplot as plt
import pandas as pd
from omegaconf import OmegaConf

from mura_lightning.compare import COMPARE_CSV, forest_plot
from mura_lightning.compare import markdown as compare_markdown
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.io import HYDRA_DIR, write_text_atomic
from mura_lightning.reporting.build import REPORT_FILE, ReportSettings
from mura_lightning.reporting.figures import png_data_uri
from mura_lightning.reporting.templating import environment
from mura_lightning.runs import run_labels

log = logging.getLogger(__name__)


def is_comparison(folder: str | Path) -> bool:
    """Whether `folder` is a `python -m mura_lightning.compare` output."""
    return (Path(folder) / COMPARE_CSV).is_file()


def comparison_table(folder: Path) -> pd.DataFrame:
    """compare.csv, with the models' labels (computed from the run folders for files written before compare
    named them)."""
    path = folder / COMPARE_CSV
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MuraError(f"{path} cannot be read as a CSV: {err}") from err
    if "run_label" not in table.columns:
        labels = run_labels(list(dict.fromkeys([*table["reference"], *table["run"]])))
        table.insert(2, "run_label", table["run"].map(labels))
        table.insert(2, "reference_label", table["reference"].map(labels))
    return table


def bootstrap_settings(folder: Path) -> BootstrapSettings:
    """The bootstrap settings the comparison ran with (its .hydra/config.yaml); the defaults when it is gone."""
    path = folder / HYDRA_DIR / "config.yaml"
    if not path.is_file():
        return BootstrapSettings()
    saved = OmegaConf.select(OmegaConf.load(path), "metrics.bootstrap", default=None)
    return BootstrapSettings.from_config(OmegaConf.to_container(saved)) if saved is not None else BootstrapSettings()


def write_comparison_report(folder: str | Path, settings: ReportSettings) -> list[Path]:
    """Write report.html into a compare folder; its path."""
    folder = Path(folder)
    table = comparison_table(folder)
    bootstrap = bootstrap_settings(folder)
    figure = forest_plot(table, bootstrap.confidence)
    plot = png_data_uri(figure, settings.figure_dpi)
    plt.close(figure)
    pairs = list(dict.fromkeys(zip(table["reference_label"], table["run_label"], strict=True)))
    title = " and ".join(f"{run} against {reference}" for reference, run in pairs)
    page = (
        environment()
        .get_template("compare.html.j2")
        .render(
            title=title,
            folder=str(folder),
            forest_plot=plot,
            tables=markdown.markdown(compare_markdown(table, bootstrap), extensions=["tables"]),
        )
    )
    path = write_text_atomic(folder / REPORT_FILE, page)
    log.info("report: %s", path)
    return [path]
