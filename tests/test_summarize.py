"""The sweep summary: one row per job (failed and unfinished ones included), the pivot table, the chart, the
terminal table, and clear errors for bad input."""

from __future__ import annotations

import io
import json
import math
import re
import traceback
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import compose_run, run_module
from rich.console import Console

from mura_lightning import train as train_module
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.tables import rich_table
from mura_lightning.runs import Job, first_error_line
from mura_lightning.summarize import (
    TABLE_METRICS,
    chart,
    main,
    print_summary,
    summarize,
    summary_frame,
)

COMMON = ["data.root=/data/MURA-v1.1", "trainer=cpu"]
KAPPA = "test/study/kappa"
AUROC = "test/study/auroc"
BAD_FRACTION = "data.val_fraction=1.5 must lie strictly between 0 and 1"


def made_up_results(model: str, parts: list[str], kappa: float) -> dict:
    """A results.json like a training job writes, its metrics derived from `kappa`."""
    metrics = {name: round(kappa + 0.01 * i, 4) for i, name in enumerate(TABLE_METRICS)}
    metrics[KAPPA] = kappa
    return {
        **metrics,
        "test/study/sensitivity": kappa / 2,
        "model": model,
        "body_parts": parts,
        "overrides": [],
        "ckpt_path": "/runs/checkpoints/best-epoch003.ckpt",
        "run_dir": "/runs",
        "pretrained": False,
    }


def write_job(sweep: Path, name: str, overrides: list[str], results=None, error=None, config=None) -> Path:
    """A job folder as Hydra and the training app leave it."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra/overrides.yaml").write_text("".join(f"- {override}\n" for override in overrides))
    if config is not None:
        (job / ".hydra/config.yaml").write_text(config)
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if error is not None:
        (job / "error.txt").write_text(error)
    return job


def a_traceback() -> str:
    """error.txt as the training app writes it: a chained traceback."""
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise MuraError(f"{BAD_FRACTION}\nsecond line") from inner
    except MuraError as err:
        return "".join(traceback.format_exception(err))


def job_config(backbone: str, parts: list[str]) -> str:
    """A .hydra/config.yaml with the body parts written the way the train config does."""
    bodypart = "".join(f"  {part}: XR_{part.upper()}\n" for part in parts)
    return (
        f"bodypart:\n{bodypart}data:\n  body_parts: ${{oc.dict.keys:bodypart}}\n"
        f"model:\n  backbone:\n    name: {backbone}\n"
    )


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Six jobs: four finished (two share densenet169 x shoulder), one failed, one unfinished."""
    sweep = tmp_path / "2026-01-01_00-00-00"
    jobs = [
        ("0_model=densenet169,bodypart=shoulder", "densenet169", ["shoulder"], 0.6),
        ("1_model=densenet169,bodypart=wrist", "densenet169", ["wrist"], 0.7),
        ("2_model=resnet50,bodypart=shoulder", "resnet50", ["shoulder"], 0.5),
        ("4_model=densenet169,bodypart=shoulder,seed=2", "densenet169", ["shoulder"], 0.8),
    ]
    for name, model, parts, kappa in jobs:
        swept = [f"model={model}", f"bodypart={parts[0]}", *(["seed=2"] if "seed" in name else [])]
        write_job(sweep, name, [*COMMON, *swept], results=made_up_results(model, parts, kappa))
    failed = ["model=resnet50", "bodypart=wrist"]
    write_job(
        sweep,
        "3_model=resnet50,bodypart=wrist",
        [*COMMON, *failed],
        error=a_traceback(),
        config=job_config("resnet50", ["wrist"]),
    )
    unfinished = ["model=resnet50", "bodypart=[hand,wrist]"]
    write_job(
        sweep,
        "10_model=resnet50,bodypart=[hand,wrist]",
        [*COMMON, *unfinished],
        config=job_config("resnet50", ["hand", "wrist"]),
    )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_summary_lists_every_job_in_order_with_its_status(sweep):
    summarize(sweep)
    frame = pd.read_csv(sweep / "summary.csv", keep_default_na=False, na_values=[""])
    assert [name.split("_")[0] for name in frame["job"]] == ["0", "1", "2", "3", "4", "10"]
    assert list(frame["status"]) == ["ok", "ok", "ok", "failed", "ok", "unfinished"]
    assert list(frame["backbone"]) == ["densenet169", "densenet169", "resnet50", "resnet50", "densenet169", "resnet50"]
    assert list(frame["body_part"]) == ["shoulder", "wrist", "shoulder", "wrist", "shoulder", "hand+wrist"]
    assert frame["overrides"][4] == "model=densenet169 bodypart=shoulder seed=2"
    assert frame["overrides"][5] == "model=resnet50 bodypart=[hand,wrist]"
    assert (
        frame["error"][3] == "mura_lightning.errors.MuraError: data.val_fraction=1.5 must lie strictly between 0 and 1"
    )
    assert frame["error"].isna().sum() == 5
    assert list(frame.columns) == ["job", "backbone", "body_part", "overrides", "status", *TABLE_METRICS, "error"]
    assert frame[KAPPA].tolist()[:3] == [0.6, 0.7, 0.5]
    assert frame[AUROC][1] == made_up_results("densenet169", ["wrist"], 0.7)[AUROC]
    assert frame.loc[[3, 5], KAPPA].isna().all()


def test_pivot_is_the_metric_by_backbone_and_body_part(sweep):
    summary = summarize(sweep)
    pivot = pd.read_csv(sweep / "summary_pivot.csv", index_col="backbone")
    assert list(pivot.columns) == ["shoulder", "wrist"], "unfinished hand+wrist has no value"
    assert pivot.loc["densenet169", "shoulder"] == pytest.approx(0.7), "the mean of the two densenet169 shoulder jobs"
    assert pivot.loc["densenet169", "wrist"] == pytest.approx(0.7)
    assert pivot.loc["resnet50", "shoulder"] == pytest.approx(0.5)
    assert math.isnan(pivot.loc["resnet50", "wrist"]), "the failed job is not a result"
    assert summary["pivot"].equals(pivot.rename_axis(columns=None))


def test_another_metric_picks_the_pivot_and_joins_the_table(sweep):
    summarize(sweep, metric="test/study/sensitivity")
    pivot = pd.read_csv(sweep / "summary_pivot.csv", index_col="backbone")
    assert pivot.loc["resnet50", "shoulder"] == pytest.approx(0.25)
    assert "test/study/sensitivity" in pd.read_csv(sweep / "summary.csv").columns
    assert "## test/study/sensitivity by backbone and body part" in (sweep / "summary.md").read_text()


def test_markdown_holds_the_job_table_the_pivot_and_the_chart(sweep):
    summarize(sweep)
    text = (sweep / "summary.md").read_text()
    assert "6 jobs: 4 ok, 1 failed, 1 unfinished" in text
    assert "| job | backbone | body part | overrides | status | val kappa | test kappa |" in text
    job_rows = [
        line for line in text.splitlines() if line.startswith(("| 0_", "| 1_", "| 2_", "| 3_", "| 4_", "| 10_"))
    ]
    assert len(job_rows) == 6
    assert "| failed |" in job_rows[3] and "data.val_fraction=1.5 must lie" in job_rows[3]
    assert "| unfinished |" in job_rows[5]
    assert "| 0.600 | " in job_rows[0]
    assert "Overrides common to every job: `data.root=/data/MURA-v1.1` `trainer=cpu`" in text
    assert "| densenet169 | 0.700 | 0.700 |" in text
    assert "| resnet50 | 0.500 |  |" in text
    assert "![test/study/kappa](summary.png)" in text


def test_chart_has_one_bar_per_backbone_and_body_part(sweep):
    summary = summarize(sweep)
    assert (sweep / "summary.png").read_bytes().startswith(b"\x89PNG")
    axes = chart(summary["summary"], KAPPA).axes[0]
    heights = sorted(round(bar.get_height(), 6) for container in axes.containers for bar in container)
    assert [h for h in heights if not math.isnan(h)] == [0.5, 0.7, 0.7]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["densenet169", "resnet50"]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["shoulder", "wrist"]


def test_output_folder_keeps_the_sweep_untouched(sweep, tmp_path):
    before = sorted(path.name for path in sweep.iterdir())
    summarize(sweep, output=tmp_path / "tables")
    assert sorted(path.name for path in sweep.iterdir()) == before
    names = {"summary.csv", "summary.md", "summary_pivot.csv", "summary.png"}
    names |= {"summary_groups.csv", "summary_repeats.csv", "summary_pooled.csv"}  # jobs 0 and 4 repeat over seed
    assert {path.name for path in (tmp_path / "tables").iterdir()} == names


def test_terminal_shows_jobs_errors_and_pivot(sweep, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "6 jobs: 4 ok, 1 failed, 1 unfinished" in out
    assert "job 3 failed: mura_lightning.errors.MuraError: data.val_fraction=1.5" in out
    assert "unfinished" in out and "hand+wrist" in out
    jobs_table = out[out.index("6 jobs:") :]
    assert "bodypart=[hand,wrist]" not in jobs_table, (
        "the body part column shows it, the overrides column leaves it out"
    )
    assert "repeat groups" in out and "model=densenet169 bodypart=shoulder" in out
    assert "test/study/kappa by backbone and body part" in out
    assert (sweep / "summary.csv").is_file()


def test_a_sweep_where_nothing_finished_still_lists_its_jobs(tmp_path):
    write_job(tmp_path, "0_model=resnet50", COMMON, error="CUDA out of memory\n")
    write_job(tmp_path, "1_model=densenet169", COMMON)
    summary = summarize(tmp_path)
    assert list(summary["summary"]["status"]) == ["failed", "unfinished"]
    assert summary["summary"]["error"][0] == "CUDA out of memory"
    assert list(summary["summary"]["backbone"]) == ["unknown", "unknown"], "no config.yaml to read it from"
    assert summary["pivot"].empty
    assert "No finished job has test/study/kappa." in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").read_bytes().startswith(b"\x89PNG")


def test_a_real_training_run_is_summarised(tmp_path):
    results = train_module.train(compose_run(write_tree(tmp_path, standard_studies()), tmp_path / "sweep"))
    (tmp_path / "sweep/run/.hydra").mkdir()
    row = summarize(tmp_path / "sweep")["summary"].iloc[0]
    assert (row["job"], row["backbone"], row["body_part"], row["status"]) == (
        "run",
        "densenet169",
        "shoulder+wrist",
        "ok",
    )
    for name in TABLE_METRICS:
        assert row[name] == pytest.approx(results[name], nan_ok=True)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (a_traceback(), f"mura_lightning.errors.MuraError: {BAD_FRACTION}"),
        ("\n\nkilled by the scheduler\nmore\n", "killed by the scheduler"),
        ("", ""),
    ],
)
def test_first_error_line(text, line):
    assert first_error_line(text) == line


def test_unreadable_results_make_a_failed_job_saying_why(sweep):
    (sweep / "1_model=densenet169,bodypart=wrist/results.json").write_text('{"test/study/kappa": 0.')
    (sweep / "2_model=resnet50,bodypart=shoulder/results.json").write_text("[1, 2]")
    frame = summarize(sweep)["summary"]
    assert list(frame["status"][1:3]) == ["failed", "failed"]
    assert frame["error"][1].startswith("cannot read results.json: Expecting ',' delimiter")
    assert frame["error"][2] == "results.json holds no metrics (a list, not an object)"


def test_damaged_hydra_files_leave_the_job_listed(sweep):
    job = sweep / "3_model=resnet50,bodypart=wrist/.hydra"
    (job / "config.yaml").write_text("model: [unclosed\n")
    (job / "overrides.yaml").write_text(": : :\n")
    row = summarize(sweep)["summary"].iloc[3]
    assert (row["backbone"], row["body_part"], row["overrides"], row["status"]) == ("unknown", "unknown", "", "failed")


run_summarize = partial(run_module, "mura_lightning.summarize")


def test_missing_folder_is_a_one_line_error(tmp_path):
    result = run_summarize(str(tmp_path / "missing"))
    assert result.returncode == 2
    assert f"error: {tmp_path / 'missing'} is not a folder; pass a multirun folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_folder_without_jobs_is_an_error(tmp_path):
    (tmp_path / "not_a_job").mkdir()
    with pytest.raises(MuraError, match=r"holds no job folders \(sub-folders with a .hydra/ folder\)"):
        summarize(tmp_path)


def test_unknown_metric_lists_the_available_ones(sweep):
    with pytest.raises(MuraError, match=r"--metric test/study/kapa is not in any results.json; choose one of: ") as err:
        summarize(sweep, metric="test/study/kapa")
    assert "test/study/kappa, test/study/recall_abnormal" in str(err.value)
    assert not (sweep / "summary.csv").exists()


def test_summary_frame_keeps_jobs_without_metrics_as_nan():
    jobs = [Job(Path("0_a"), "resnet50", "hand", ("x=1",), "unfinished")]
    frame = summary_frame(jobs, KAPPA)
    assert frame[list(TABLE_METRICS)].isna().all(axis=None)
    assert frame["overrides"][0] == "", "an override every job shares is not repeated per row"


def test_the_tables_fit_an_80_column_terminal_one_line_per_row(sweep):
    summary = summarize(sweep)
    console = Console(width=80, record=True, file=io.StringIO())
    print_summary(summary["summary"], summary["pivot"], sweep.name, KAPPA, console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    for job in ("0", "1", "2", "3", "4", "10"):
        (row,) = [line for line in lines if re.match(rf"\s*{job}\s", line)]
        assert re.search(r"densenet169|resnet50", row) and re.search(r"ok|failed|unfinished", row), row
    for number in ("0.600", "0.700", "0.500", "0.800"):
        assert any(number in line for line in lines), f"{number} is shown whole"
    header = [line for line in lines if "job" in line and "backbone" in line]
    assert len(header) == 1 and "test kappa" in header[0], "headers stay on one line"
    (job_4,) = [line for line in lines if re.match(r"\s*4\s", line)]
    assert job_4.rstrip().endswith("seed=2"), "the override that tells job 4 from job 0"
    assert "densenet169 0.700 0.700" in re.sub(r"\s+", " ", "\n".join(lines)), "the pivot table"


def test_terminal_cells_are_shown_verbatim_not_read_as_rich_markup():
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(rich_table(pd.DataFrame({"overrides": ["x=[bold]y[/bold]"]}), "t"))
    assert "x=[bold]y[/bold]" in console.export_text()


def test_a_pruned_search_trial_is_counted_as_pruned_with_its_reason(tmp_path, capsys, monkeypatch):
    write_job(tmp_path, "0_lr-0.001", COMMON, results=made_up_results("densenet169", ["hand"], 0.5))
    pruned = write_job(tmp_path, "1_lr-0.1", COMMON)
    (pruned / "pruned.txt").write_text("pruned after epoch 1: val/study/kappa = 0.02\n")
    summary = summarize(tmp_path)
    assert list(summary["summary"]["status"]) == ["ok", "pruned"]
    assert summary["summary"]["error"][1] == "pruned after epoch 1: val/study/kappa = 0.02"
    monkeypatch.setenv("COLUMNS", "200")
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "2 jobs: 1 ok, 0 failed, 1 pruned, 0 unfinished" in out
    assert "job 1 pruned: pruned after epoch 1" in out
