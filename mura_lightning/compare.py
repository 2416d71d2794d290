"""`python -m mura_lightning.compare a=DIR b=DIR [output=DIR]` (or `runs=[A,B,C] reference=A`): is model B better
than model A? A paired comparison on the same test studies, read from each folder's `predictions_test.csv`
(a training run or an evaluate output).

For each body part and overall, and each metric of `metrics` (kappa, AUROC, sensitivity, specificity): A's and
B's values, the difference B - A with its percentile interval over patient resamples applied to both models
alike (mura_lightning/evaluation/bootstrap.py, settings `metrics.bootstrap.*`) and a two-sided bootstrap
p-value; for AUROC also DeLong's p-value. A row is significant when its interval leaves out 0. The models are
named by what differs between them (backbone, overrides: `runs.run_labels`). Writes `compare.csv`, `compare.md` and
the forest plot `compare.png` into the output folder (default `outputs/compare/<date>_<time>/`).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from mura_lightning.cli import hydra_app
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import (
    METRICS,
    OVERALL,
    BootstrapSettings,
    body_parts_of,
    paired_intervals,
)
from mura_lightning.evaluation.delong import delong_test
from mura_lightning.evaluation.outputs import read_study_predictions
from mura_lightning.evaluation.tables import DECIMALS, number_text
from mura_lightning.io import write_atomically, write_text_atomic
from mura_lightning.runs import run_labels

log = logging.getLogger(__name__)

COMPARE_CSV, COMPARE_MD, COMPARE_PNG = "compare.csv", "compare.md", "compare.png"
SHOWN_STUDIES = 3  # studies named in an error
FIGURE_DPI = 120
PANEL_SIZE = (3.2, 0.32)  # inches: width of a metric's panel, height of a row
SIGNIFICANT_COLOR, PLAIN_COLOR = "tab:red", "tab:gray"


def _first(values) -> str:
    return ", ".join(sorted(values)[:SHOWN_STUDIES])


def align(reference: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """`other`'s rows in the order of `reference`'s studies; a MuraError when the two hold different studies, or
    disagree on a study's label, patient or body part."""
    only_reference = set(reference["study"]) - set(other["study"])
    only_other = set(other["study"]) - set(reference["study"])
    if only_reference or only_other:
        raise MuraError(
            f"{names[0]} and {names[1]} were not tested on the same studies: {len(only_reference)} only in "
            f"{names[0]} ({_first(only_reference) or '-'}), {len(only_other)} only in {names[1]} "
            f"({_first(only_other) or '-'}); compare runs evaluated on the same split and body parts"
        )
    aligned = other.set_index("study").loc[reference["study"]].reset_index()
    for column in ("label", "patient", "body_part"):
        differ = reference["study"][reference[column].to_numpy() != aligned[column].to_numpy()]
        if len(differ):
            raise MuraError(
                f"{names[0]} and {names[1]} disagree on the {column} of {len(differ)} studies ({_first(differ)}): "
                "their predictions come from different data"
            )
    return aligned


def delong_p_values(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, float]:
    """DeLong's two-sided p-value of AUROC B = AUROC A for each body part and `overall` (NaN for one class)."""
    groups = {part: (first["body_part"] == part).to_numpy() for part in body_parts_of(first)}
    groups[OVERALL] = np.ones(len(first), dtype=bool)
    return {
        part: delong_test(
            first["label"].to_numpy()[rows], first["prob"].to_numpy()[rows], second["prob"].to_numpy()[rows]
        ).p_value
        for part, rows in groups.items()
    }


def compare_pair(
    first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str], settings: BootstrapSettings, metrics: list[str]
) -> pd.DataFrame:
    """The comparison rows of B (`second`) against A (`first`): reference, run, body_part, metric, a, b,
    difference, ci_low, ci_high, p_bootstrap, p_delong (AUROC only), significant (the interval leaves out 0)."""
    second = align(first, second, names)
    table = paired_intervals(
        first,
        second,
        samples=settings.samples,
        confidence=settings.confidence,
        seed=settings.seed,
        metrics=tuple(metrics),
    )
    delong = delong_p_values(first, second)
    table["p_delong"] = np.where(table["metric"] == "auroc", table["body_part"].map(delong), np.nan)
    table["significant"] = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    table.insert(0, "run", names[1])
    table.insert(0, "reference", names[0])
    return table


def run_folders(cfg: DictConfig) -> tuple[list[str], str]:
    """The folders to compare and the reference among them, from `a`/`b` or `runs`/`reference`."""
    runs = list(cfg.runs) if cfg.get("runs") else None
    if runs and (cfg.get("a") or cfg.get("b")):
        raise MuraError("give either a=DIR b=DIR or runs=[A,B,...], not both")
    if runs is None:
        if not (cfg.get("a") and cfg.get("b")):
            raise MuraError("give the two folders to compare: a=DIR b=DIR (or runs=[A,B,...] reference=A)")
        runs = [cfg.a, cfg.b]
    runs = [str(run) for run in runs]
    if len(runs) < 2 or len(set(runs)) < len(runs):
        raise MuraError(f"runs={runs} must name at least two different folders")
    reference = str(cfg.get("reference") or runs[0])
    if reference not in runs:
        raise MuraError(f"reference={reference} is not one of runs={runs}")
    return runs, reference


def _p_value(value: float) -> str:
    if pd.isna(value):
        return ""
    return f"<{10**-DECIMALS:.{DECIMALS}f}" if value < 10**-DECIMALS else f"{value:.{DECIMALS}f}"


def markdown(table: pd.DataFrame, settings: BootstrapSettings) -> str:
    """compare.md: one table per comparison; significant rows marked with *."""
    percent = f"{settings.confidence:.0%}"
    lines = [
        "# Paired comparison",
        "",
        f"B - A on the same test studies; {percent} percentile intervals over {settings.samples} patient resamples "
        f"(seed {settings.seed}), stratified by body part; two-sided bootstrap p-values; DeLong's p-value for AUROC. "
        "`*`: the interval leaves out 0.",
    ]
    for (reference, run), rows in table.groupby(["reference", "run"], sort=False):
        first = rows.iloc[0]
        lines += [
            "",
            f"## B = {first.run_label} against A = {first.reference_label}",
            "",
            f"A: `{reference}`; B: `{run}`",
            "",
            f"| body part | metric | A | B | B - A ({percent} CI) | p bootstrap | p DeLong |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in rows.itertuples():
            mark = "*" if row.significant else ""
            a, b, low, high = (number_text(value, missing="NaN") for value in (row.a, row.b, row.ci_low, row.ci_high))
            interval = "NaN" if pd.isna(row.difference) else f"{row.difference:+.{DECIMALS}f} ({low} to {high})"
            lines.append(
                f"| {row.body_part}{mark} | {row.metric} | {a} | {b} | {interval} | "
                f"{_p_value(row.p_bootstrap)} | {_p_value(row.p_delong)} |"
            )
    return "\n".join(lines) + "\n"


def forest_plot(table: pd.DataFrame, confidence: float) -> Figure:
    """One panel per metric: each body part's (and overall's) difference B - A with its interval, a zero line,
    significant rows in red and filled; the models named by their labels (`run_labels`)."""
    metrics = list(dict.fromkeys(table["metric"]))
    pairs = list(dict.fromkeys(zip(table["reference_label"], table["run_label"], strict=True)))
    rows = table[table["metric"] == metrics[0]]
    labels = [
        part if len(pairs) == 1 else f"{part}: {run}"
        for part, run in zip(rows["body_part"], rows["run_label"], strict=True)
    ]
    width, height = PANEL_SIZE
    figure = Figure(figsize=(width * len(metrics), 1.2 + height * len(labels)), layout="constrained")
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    positions = np.arange(len(labels))[::-1]
    for axis, metric in zip(axes, metrics, strict=True):
        values = table[table["metric"] == metric]
        for y, row in zip(positions, values.itertuples(), strict=True):
            color = SIGNIFICANT_COLOR if row.significant else PLAIN_COLOR
            errors = [[row.difference - row.ci_low], [row.ci_high - row.difference]]
            axis.errorbar(
                row.difference,
                y,
                xerr=errors,
                fmt="o",
                color=color,
                markerfacecolor=color if row.significant else "white",
                capsize=3,
            )
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_title(metric)
        axis.set_xlabel("B - A")
    axes[0].set_yticks(positions, labels)
    title = f"B = {pairs[0][1]} vs A = {pairs[0][0]}" if len(pairs) == 1 else f"B - A = {pairs[0][0]}"
    figure.suptitle(f"{title}: {confidence:.0%} patient-bootstrap intervals (red: leaves out 0)")
    return figure


def compare(cfg: DictConfig) -> pd.DataFrame:
    """Compare every run with the reference; write compare.csv, compare.md and compare.png into cfg.output."""
    settings = BootstrapSettings.from_config(OmegaConf.to_container(cfg.metrics.bootstrap))
    metrics = list(cfg.compared_metrics)
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise MuraError(f"compared_metrics={metrics} must be some of {', '.join(METRICS)}")
    runs, reference = run_folders(cfg)
    frames = {run: read_study_predictions(run) for run in runs}
    tables = [
        compare_pair(frames[reference], frames[run], (reference, run), settings, metrics)
        for run in runs
        if run != reference
    ]
    table = pd.concat(tables, ignore_index=True)
    labels = run_labels(runs)
    table.insert(2, "run_label", table["run"].map(labels))
    table.insert(2, "reference_label", table["reference"].map(labels))
    out = Path(cfg.output)
    text = markdown(table, settings)
    write_atomically(out / COMPARE_CSV, lambda tmp: table.to_csv(tmp, index=False))
    write_text_atomic(out / COMPARE_MD, text)
    figure = forest_plot(table, settings.confidence)
    write_atomically(out / COMPARE_PNG, partial(figure.savefig, format="png", dpi=FIGURE_DPI))
    print(text)
    log.info("comparison written to %s", out)
    return table


@hydra_app("compare")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    compare(cfg)


if __name__ == "__main__":
    main()
