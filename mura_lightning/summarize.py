"""`python -m mura_lightning.summarize DIR [--metric test/study/kappa] [--output DIR2]`: one table for a sweep.

Reads every job folder of a multirun folder (`outputs/multirun/<date>_<time>/`) and writes `summary.csv` and
`summary.md` (one row per job, failed and unfinished ones included), `summary_pivot.csv` (the chosen metric by
backbone x body part) and `summary.png` (the same as a grouped bar chart), and prints the tables. When jobs repeat
a setting over `data.fold` and/or `seed` (cross-validation, seeds), it also writes one row per repeat group
(`summary_groups.csv` and in summary.md: mean ± sd over the finished repeats, pooled out-of-fold metrics with
patient-bootstrap intervals), `summary_repeats.csv` (mean and sd of every metric) and `summary_pooled.csv`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text

from mura_lightning.errors import MuraError, exit_on_user_error
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.evaluation.repeats import has_repeats, numeric_metrics, repeat_groups, repeat_tables
from mura_lightning.evaluation.tables import as_number, bounds_text, markdown_table, rich_table
from mura_lightning.io import FAILED, OK, PRUNED, UNFINISHED, write_atomically, write_text_atomic
from mura_lightning.runs import Job, job_number, read_sweep

log = logging.getLogger(__name__)

DEFAULT_METRIC = "test/study/kappa"
TABLE_METRICS = {  # metric -> short header in summary.md and the terminal
    "val/study/kappa": "val kappa",
    "test/study/kappa": "test kappa",
    "test/study/accuracy": "test acc",
    "test/study/recall_abnormal": "recall abn",
    "test/study/f1_abnormal": "F1 abn",
    "test/study/recall_normal": "recall norm",
    "test/study/f1_normal": "F1 norm",
    "test/study/auroc": "AUROC",
}
TERMINAL_METRICS = ("val/study/kappa", "test/study/kappa", "test/study/auroc")  # the rest is in summary.md
SUMMARY_CSV, SUMMARY_MD, PIVOT_CSV, CHART = "summary.csv", "summary.md", "summary_pivot.csv", "summary.png"
GROUPS_CSV, REPEATS_CSV, POOLED_CSV = "summary_groups.csv", "summary_repeats.csv", "summary_pooled.csv"
REPEAT_FILES = {"groups": GROUPS_CSV, "statistics": REPEATS_CSV, "pooled": POOLED_CSV}  # repeat_tables' tables
GROUP_METRICS = ("val/study/kappa", "test/study/kappa", "test/study/auroc")  # mean ± sd over a group's repeats
POOLED_METRICS = {"kappa": "pooled val kappa", "auroc": "pooled val AUROC"}  # of the pooled val predictions
CHART_SIZE = (8.0, 4.5)  # inches
CHART_DPI = 120
SHOWN_OVERRIDES = ("model=", "bodypart=")  # in the backbone and body part columns: left out of the terminal's


def available_metrics(jobs: list[Job]) -> list[str]:
    """The numeric metric names found in the jobs' results."""
    return sorted({name for job in jobs for name in numeric_metrics(job.results)})


def check_metric(metric: str, jobs: list[Job]) -> None:
    """Raise a MuraError listing the available metrics when some job has results but none has `metric`."""
    available = available_metrics(jobs)
    if available and metric not in available:
        raise MuraError(f"--metric {metric} is not in any results.json; choose one of: {', '.join(available)}")


def common_overrides(jobs: list[Job]) -> list[str]:
    """The overrides every job shares (the sweep's fixed settings), in the first job's order."""
    shared = set.intersection(*(set(job.overrides) for job in jobs))
    return [override for override in jobs[0].overrides if override in shared]


def summary_frame(jobs: list[Job], metric: str) -> pd.DataFrame:
    """One row per job: job, backbone, body_part, the overrides that differ between jobs, status, the table
    metrics (and `metric`), and the first error line."""
    shared = set(common_overrides(jobs))
    metrics = list(dict.fromkeys([*TABLE_METRICS, metric]))
    rows = [
        {
            "job": job.name,
            "backbone": job.backbone,
            "body_part": job.body_part,
            "overrides": " ".join(o for o in job.overrides if o not in shared),
            "status": job.status,
            **{name: as_number(job.results.get(name)) for name in metrics},
            interval_column(metric): interval_text(job.results, metric),
            "error": job.error,
        }
        for job in jobs
    ]
    frame = pd.DataFrame(rows)
    return frame if frame[interval_column(metric)].any() else frame.drop(columns=interval_column(metric))


def interval_column(metric: str) -> str:
    """The column of `metric`'s bootstrap interval."""
    return f"{metric} CI"


def interval_text(results: dict, metric: str) -> str:
    """`low-high`, the patient-bootstrap bounds of `metric` (`test/study/kappa[/part]`, whose bounds are
    `test/study/kappa_ci_low[/part]`) in a job's results; "" when it has none."""
    stage_level_name, _, part = metric.rpartition("/") if metric.count("/") == 3 else (metric, "", "")
    suffix = f"/{part}" if part else ""
    low = as_number(results.get(f"{stage_level_name}_ci_low{suffix}"))
    high = as_number(results.get(f"{stage_level_name}_ci_high{suffix}"))
    return bounds_text(low, high)


def pivot_frame(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` of the finished jobs by backbone (rows) x body part (columns); the mean where several jobs
    share a cell."""
    done = frame[(frame["status"] == OK) & frame[metric].notna()]
    pivot = done.pivot_table(index="backbone", columns="body_part", values=metric, aggfunc="mean")
    return pivot.rename_axis(index="backbone", columns=None)


def status_counts(frame: pd.DataFrame) -> str:
    """'N jobs: a ok, b failed, c unfinished' (and d pruned, when a search pruned some)."""
    counts = frame["status"].value_counts()
    shown = (OK, FAILED, PRUNED, UNFINISHED) if counts.get(PRUNED, 0) else (OK, FAILED, UNFINISHED)
    parts = ", ".join(f"{counts.get(status, 0)} {status}" for status in shown)
    return f"{len(frame)} jobs: {parts}"


def _markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame, TABLE_METRICS)


def markdown_report(
    sweep_dir: Path, frame: pd.DataFrame, pivot: pd.DataFrame, shared: list[str], metric: str, groups: pd.DataFrame
) -> str:
    """summary.md: the repeat groups (when jobs repeat a setting), the job table, the overrides common to all
    jobs, the pivot table and the chart."""
    pivot_text = _markdown(pivot.reset_index()) if not pivot.empty else f"No finished job has {metric}."
    shared_text = " ".join(f"`{override}`" for override in shared) or "none"
    groups_text = (
        "## Repeat groups\n\nJobs that differ only in `data.fold` and/or `seed`: the mean ± standard deviation over "
        "the finished repeats; the pooled val metrics score all of a group's validation predictions together (in "
        "cross-validation every training study once, out of fold), with 95 % patient-bootstrap intervals. Failed "
        f"and unfinished members are listed under left out, not averaged.\n\n{_markdown(groups)}\n\n"
        if not groups.empty
        else ""
    )
    return (
        f"# Sweep {sweep_dir.name}\n\n{status_counts(frame)}.\n\n{groups_text}## Jobs\n\n{_markdown(frame)}\n\n"
        f"Overrides common to every job: {shared_text}\n\n"
        f"## {metric} by backbone and body part\n\nFinished jobs only; the mean where several jobs share a cell.\n\n"
        f"{pivot_text}\n\n![{metric}]({CHART})\n"
    )


def chart(frame: pd.DataFrame, metric: str) -> Figure:
    """A grouped bar chart of `metric` over the finished jobs: body part on x, one colour per backbone (both in
    the pivot table's order); the bar is the mean where several jobs share it, with their standard deviation."""
    figure = Figure(figsize=CHART_SIZE)
    axes = figure.subplots()
    done = frame[(frame["status"] == OK) & frame[metric].notna()]
    if done.empty:
        axes.text(0.5, 0.5, f"no finished job has {metric}", ha="center", va="center")
        axes.set_axis_off()
        return figure
    sns.barplot(
        data=done,
        x="body_part",
        y=metric,
        hue="backbone",
        order=sorted(done["body_part"].unique()),
        hue_order=sorted(done["backbone"].unique()),
        errorbar="sd",
        ax=axes,
    )
    axes.set_xlabel("body part")
    axes.set_title(f"{metric} by body part and backbone")
    figure.tight_layout()
    return figure


def summarize(
    sweep_dir: str | Path,
    metric: str = DEFAULT_METRIC,
    output: str | Path | None = None,
    bootstrap: BootstrapSettings | None = None,
) -> dict:
    """Summarise a multirun folder into summary.csv, summary.md, summary_pivot.csv and summary.png, and with
    repeat groups summary_groups.csv, summary_repeats.csv and summary_pooled.csv (in `output`, by default the
    folder itself; the pooled intervals drawn with `bootstrap`, default 2000 resamples); returns the paths
    written and the tables."""
    sweep_dir = Path(sweep_dir).expanduser()
    jobs = read_sweep(sweep_dir)
    check_metric(metric, jobs)
    frame = summary_frame(jobs, metric)
    pivot = pivot_frame(frame, metric)
    groups = repeat_groups(jobs)
    metrics = list(dict.fromkeys([*GROUP_METRICS, metric]))
    repeats = (
        repeat_tables(groups, metrics, POOLED_METRICS, bootstrap or BootstrapSettings())
        if has_repeats(groups)
        else dict.fromkeys(REPEAT_FILES, pd.DataFrame())
    )
    out = Path(output).expanduser() if output is not None else sweep_dir
    figure = chart(frame, metric)
    report = markdown_report(sweep_dir, frame, pivot, common_overrides(jobs), metric, repeats["groups"])
    paths = {
        "csv": write_text_atomic(out / SUMMARY_CSV, frame.to_csv(index=False)),
        "markdown": write_text_atomic(out / SUMMARY_MD, report),
        "pivot": write_text_atomic(out / PIVOT_CSV, pivot.to_csv()),
        "chart": write_atomically(out / CHART, lambda tmp: figure.savefig(tmp, format="png", dpi=CHART_DPI)),
    }
    if not repeats["groups"].empty:
        for name, file in REPEAT_FILES.items():
            paths[name] = write_text_atomic(out / file, repeats[name].to_csv(index=False))
    return {"paths": paths, "summary": frame, "pivot": pivot, **{f"repeat_{k}": v for k, v in repeats.items()}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: DIR, --metric, --output, --bootstrap-samples."""
    parser = argparse.ArgumentParser(prog="python -m mura_lightning.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a multirun folder, e.g. outputs/multirun/<date>_<time>/")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"metric of the pivot and chart ({DEFAULT_METRIC})")
    parser.add_argument("--output", type=Path, default=None, help="where to write the summary files (default: DIR)")
    parser.add_argument(
        "--bootstrap-samples",
        type=int,
        default=BootstrapSettings.samples,
        help=f"patient resamples of the pooled intervals ({BootstrapSettings.samples})",
    )
    return parser.parse_args(argv)


def print_summary(frame: pd.DataFrame, pivot: pd.DataFrame, title: str, metric: str, console: Console) -> None:
    """Print the job table (jobs by number, the main metrics, errors listed under it) and the pivot table, one
    line per row however narrow the console: the overrides column is cut short first (summary.md has it all)."""
    intervals = [interval_column(metric)] if interval_column(metric) in frame.columns else []
    columns = ["job", "backbone", "body_part", "status", *dict.fromkeys([*TERMINAL_METRICS, metric]), *intervals]
    columns.append("overrides")
    compact = frame[columns].assign(
        job=[job_number(name) for name in frame["job"]],
        overrides=[_other_overrides(text) for text in frame["overrides"]],
    )
    console.print(rich_table(compact, f"{title}: {status_counts(frame)}", shrink=("overrides",), names=TABLE_METRICS))
    for job, status, error in zip(compact["job"], frame["status"], frame["error"], strict=True):
        if error:
            console.print(Text(f"job {job} {status}: {error}"))
    if not pivot.empty:
        console.print(rich_table(pivot.reset_index(), f"{metric} by backbone and body part", names=TABLE_METRICS))


def print_groups(groups: pd.DataFrame, title: str, metric: str, console: Console) -> None:
    """Print the repeat groups: each group's repeats, `metric` as mean ± sd and the pooled val kappa with its
    interval (summary.md has every column)."""
    columns = ["group", "repeats", metric, POOLED_METRICS["kappa"], "left out"]
    table_title = f"{title}: repeat groups (mean ± sd over finished repeats; pooled val, 95 % interval)"
    console.print(rich_table(groups[columns], table_title, shrink=("group", "left out"), names=TABLE_METRICS))


def _other_overrides(overrides: str) -> str:
    """The overrides but those the backbone and body part columns already show."""
    return " ".join(item for item in overrides.split(" ") if not item.startswith(SHOWN_OVERRIDES))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Summarise the sweep, print its tables and say where the files are."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    summary = summarize(args.dir, args.metric, args.output, BootstrapSettings(samples=args.bootstrap_samples))
    console = Console()
    if not summary["repeat_groups"].empty:
        print_groups(summary["repeat_groups"], args.dir.name, args.metric, console)
    print_summary(summary["summary"], summary["pivot"], args.dir.name, args.metric, console)
    log.info("wrote %s", ", ".join(str(path) for path in summary["paths"].values()))


if __name__ == "__main__":
    main()
