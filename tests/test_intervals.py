"""Every headline number with its uncertainty: training's final test and evaluate write the prediction files and
the patient-bootstrap intervals, print them like the MURA paper, and summarize and compare read them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import compose, compose_run, read_predictions, run_evaluate, run_module
from rich.console import Console

from mura_lightning.evaluate import evaluate
from mura_lightning.evaluation.bootstrap import BootstrapSettings, intervals
from mura_lightning.evaluation.outputs import PREDICTION_COLUMNS
from mura_lightning.evaluation.tables import print_metrics_table
from mura_lightning.summarize import summarize
from mura_lightning.train import train

BOOTSTRAP = ["metrics.bootstrap.samples=300", "metrics.bootstrap.seed=3"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, dict, dict, Path]:
    """A tiny training run and evaluate's output on its best checkpoint."""
    tmp = tmp_path_factory.mktemp("intervals")
    root = write_tree(tmp, standard_studies())
    results = train(compose_run(root, tmp / "train", *BOOTSTRAP))
    out = tmp / "evals" / "densenet"
    values = run_evaluate(out, results["ckpt_path"], *BOOTSTRAP)
    return tmp / "train" / "run", results, values, out


def test_training_and_evaluate_write_the_same_prediction_files(scored):
    run_dir, _, _, out = scored
    trained, evaluated = pd.read_csv(run_dir / "predictions_test.csv"), pd.read_csv(out / "predictions_test.csv")
    pd.testing.assert_frame_equal(trained, evaluated, atol=1e-6, check_exact=False)
    assert list(evaluated.columns) == PREDICTION_COLUMNS
    assert set(evaluated["level"]) == {"image", "study"}


@pytest.mark.parametrize("source", ["train", "evaluate"])
def test_results_and_tables_carry_the_bootstrap_bounds(scored, source):
    run_dir, results, values, out = scored
    folder, numbers = (run_dir, results) if source == "train" else (out, values)
    studies = read_predictions(folder, "study")
    expected = intervals(studies, samples=300, confidence=0.95, seed=3)
    saved = json.loads((folder / "results.json").read_text())
    for part in ("shoulder", "wrist", "overall"):
        suffix = "" if part == "overall" else f"/{part}"
        for metric in ("kappa", "sensitivity", "specificity", "accuracy", "f1_abnormal"):
            low, high = numbers[f"test/study/{metric}_ci_low{suffix}"], numbers[f"test/study/{metric}_ci_high{suffix}"]
            assert (low, high) == pytest.approx(
                (expected.loc[part, f"{metric}_ci_low"], expected.loc[part, f"{metric}_ci_high"]), nan_ok=True
            )
            assert saved[f"test/study/{metric}_ci_low{suffix}"] == pytest.approx(low, nan_ok=True)
            assert numbers[f"test/study/{metric}{suffix}"] == pytest.approx(expected.loc[part, metric], nan_ok=True)
    table = pd.read_csv(folder / "metrics_by_bodypart.csv", index_col="body_part")
    assert {"kappa_ci_low", "kappa_ci_high", "auroc_ci_low", "auroc_ci_high"} <= set(table.columns)
    assert table.loc["overall", "kappa_ci_low"] == pytest.approx(numbers["test/study/kappa_ci_low"], nan_ok=True)
    assert saved["bootstrap"] == {"samples": 300, "confidence": 0.95, "seed": 3}


def test_the_printed_table_reads_like_the_paper(scored):
    values = scored[2]
    console = Console(record=True, width=200)
    print_metrics_table(values, "test", console=console)
    text = console.export_text()
    low, high = values["test/study/kappa_ci_low"], values["test/study/kappa_ci_high"]
    assert f"{values['test/study/kappa']:.3f} ({low:.3f}-{high:.3f})" in text
    assert "95% patient-bootstrap intervals" in text


def test_summarize_shows_the_interval_beside_the_metric(scored, tmp_path):
    out = scored[3]
    (out / ".hydra").mkdir(exist_ok=True)  # what Hydra writes into a job folder
    summary = summarize(out.parent, metric="test/study/kappa", output=tmp_path)
    row = summary["summary"].iloc[0]
    values = scored[2]
    assert (
        row["test/study/kappa CI"]
        == f"{values['test/study/kappa_ci_low']:.3f}-{values['test/study/kappa_ci_high']:.3f}"
    )
    assert "test/study/kappa CI" in (tmp_path / "summary.md").read_text()


def test_compare_pairs_a_training_run_with_an_evaluation_of_its_checkpoint(scored, tmp_path):
    run_dir, _, _, out = scored
    finished = run_module(
        "mura_lightning.compare", f"a={run_dir}", f"b={out}", f"output={tmp_path}/compare", *BOOTSTRAP
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert (table["difference"].dropna().abs() < 1e-6).all(), "the same predictions differ by nothing"
    assert (tmp_path / "compare" / "compare.png").is_file()


def test_bad_bootstrap_settings_are_refused_at_start(scored, tmp_path):
    with pytest.raises(Exception, match="metrics.bootstrap.samples=50"):
        BootstrapSettings.from_config({"samples": 50})
    ckpt = scored[1]["ckpt_path"]
    overrides = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/e", f"ckpt_path={ckpt}"]
    with pytest.raises(Exception, match="confidence=1.5"):
        evaluate(compose("evaluate", [*overrides, "metrics.bootstrap.confidence=1.5"]))
    assert not (tmp_path / "e").exists()
