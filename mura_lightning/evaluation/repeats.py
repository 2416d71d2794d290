"""Repeats in a sweep: jobs that differ only in `data.fold` and/or `seed` form one group. For each group, the mean
and standard deviation of every metric over its finished members, and its pooled validation predictions (in
cross-validation: every training study once, out of fold) scored with patient-bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mura_lightning.evaluation.bootstrap import BootstrapSettings, intervals
from mura_lightning.evaluation.outputs import predictions_file, read_study_predictions
from mura_lightning.evaluation.tables import interval_text, spread_text
from mura_lightning.runs import Job

REPEAT_KEYS = ("data.fold", "seed")  # overrides whose values make repeats of one setting
NO_OTHER_OVERRIDES = "(no other overrides)"
VAL_THRESHOLD = "val/threshold"


def override_key(override: str) -> str:
    """The key an override sets (`+data.fold=2` -> `data.fold`)."""
    return override.split("=", 1)[0].lstrip("+~")


def group_label(overrides: Sequence[str]) -> str:
    """The overrides that make a setting, leaving out those of REPEAT_KEYS."""
    kept = [override for override in overrides if override_key(override) not in REPEAT_KEYS]
    return " ".join(kept) or NO_OTHER_OVERRIDES


def repeat_groups(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    """The jobs by group label, in the order of each group's first job."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(group_label(job.overrides), []).append(job)
    return groups


def has_repeats(groups: dict[str, list[Job]]) -> bool:
    """Whether some group holds more than one job."""
    return any(len(members) > 1 for members in groups.values())


def numeric_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The metric values (`stage/level/name[/part]`) of a results.json."""
    return {
        key: float(value)
        for key, value in results.items()
        if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def repeat_statistics(group: str, members: Sequence[Job]) -> pd.DataFrame:
    """One row per metric of the group's finished members: group, metric, repeats (members with a finite value),
    mean and sample standard deviation (NaN for a single repeat). Failed and unfinished members are left out."""
    finished = pd.DataFrame([numeric_metrics(job.results) for job in members if job.finished])
    columns = ["group", "metric", "repeats", "mean", "sd"]
    if finished.empty:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(
        {"repeats": finished.count(), "mean": finished.mean(), "sd": finished.std(ddof=1)}
    ).rename_axis("metric")
    return table.reset_index().assign(group=group)[columns]


def pooled_predictions(members: Sequence[Job]) -> tuple[pd.DataFrame | None, list[str]]:
    """The finished members' validation study predictions pooled into one table (a study in several members,
    as with repeated seeds, gets their mean probability), decided at the members' validation threshold; and
    notes on the members left out of it. None when nothing can be pooled."""
    frames, notes, thresholds = [], [], set()
    for job in members:
        if not job.finished:
            continue
        if not (job.folder / predictions_file("val")).is_file():
            notes.append(f"{job.name} (no {predictions_file('val')})")
            continue
        frames.append(read_study_predictions(job.folder, "val"))
        thresholds.add(job.results.get(VAL_THRESHOLD))
    if not frames:
        return None, notes
    threshold = next(iter(thresholds))
    if len(thresholds) != 1 or not isinstance(threshold, (int, float)):
        shown = ", ".join(sorted(map(str, thresholds)))
        return None, [*notes, f"not pooled: the members decided val at different or unknown thresholds ({shown})"]
    stacked = pd.concat(frames, ignore_index=True)
    pooled = stacked.groupby("study", sort=True).agg(
        patient=("patient", "first"), body_part=("body_part", "first"), label=("label", "first"), prob=("prob", "mean")
    )
    pooled["pred"] = (pooled["prob"] > float(threshold)).astype("int64")
    return pooled.reset_index(), notes


def pooled_intervals(pooled: pd.DataFrame, settings: BootstrapSettings) -> pd.DataFrame:
    """The pooled predictions' study-level metrics with their patient-bootstrap intervals, per body part and
    overall (see evaluation.bootstrap.intervals), with the number of studies."""
    table = intervals(pooled, samples=settings.samples, confidence=settings.confidence, seed=settings.seed)
    counts = pooled.groupby("body_part").size()
    table["studies"] = [int(counts.get(part, len(pooled))) for part in table.index]
    return table


def overall_interval(table: pd.DataFrame, metric: str) -> str:
    """`value (low-high)` of `metric` in the overall row of a `pooled_intervals` table."""
    row = table.loc["overall"]
    return interval_text(row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])


def repeat_tables(
    groups: dict[str, list[Job]],
    metrics: Sequence[str],
    pooled_metrics: dict[str, str],
    settings: BootstrapSettings,
) -> dict[str, pd.DataFrame]:
    """The tables of the repeat groups: `groups`, one row per group (its backbone and body part, `repeats` as
    finished of all, each of `metrics` as mean ± sd, the `pooled_metrics` (name -> column) of its pooled
    validation predictions with their intervals, the number of pooled studies, and the members left out with
    why); `statistics`, the mean and sd of every metric (repeat_statistics); `pooled`, the pooled intervals of
    every group and body part."""
    rows, statistics, pooled_tables = [], [], []
    for label, members in groups.items():
        stats = repeat_statistics(label, members)
        statistics.append(stats)
        by_metric = stats.set_index("metric")
        finished = sum(job.finished for job in members)
        row: dict[str, Any] = {
            "group": label,
            "backbone": members[0].backbone,
            "body_part": members[0].body_part,
            "repeats": f"{finished} of {len(members)}",
        }
        for metric in metrics:
            mean, sd = by_metric.loc[metric, ["mean", "sd"]] if metric in by_metric.index else (math.nan, math.nan)
            row[metric] = spread_text(float(mean), float(sd))
        pooled, notes = pooled_predictions(members)
        table = pooled_intervals(pooled, settings) if pooled is not None else None
        for metric, column in pooled_metrics.items():
            row[column] = overall_interval(table, metric) if table is not None else ""
        row["pooled studies"] = len(pooled) if pooled is not None else 0
        left_out = [f"{job.name} ({job.status})" for job in members if not job.finished]
        row["left out"] = ", ".join([*left_out, *notes])
        rows.append(row)
        if table is not None:
            pooled_tables.append(table.reset_index().assign(group=label))
    pooled_frame = pd.concat(pooled_tables, ignore_index=True) if pooled_tables else pd.DataFrame()
    if not pooled_frame.empty:
        pooled_frame = pooled_frame[["group", *[c for c in pooled_frame.columns if c != "group"]]]
    return {
        "groups": pd.DataFrame(rows),
        "statistics": pd.concat(statistics, ignore_index=True),
        "pooled": pooled_frame,
    }
