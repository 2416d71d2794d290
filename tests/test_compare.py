"""`python -m mura_lightning.compare`: a paired comparison of two runs' study predictions, and its bad inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from helpers.runs import compose, run_module
from PIL import Image

from mura_lightning.compare import COMPARE_CSV, COMPARE_MD, COMPARE_PNG, compare, forest_plot
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.delong import delong_test
from mura_lightning.evaluation.outputs import predictions_file
from mura_lightning.runs import model_setting, run_labels

PARTS = {"hand": 40, "shoulder": 40}
SAMPLES = "metrics.bootstrap.samples=200"

TEST_FILE = predictions_file("test")


def study_predictions(seed: int = 0) -> pd.DataFrame:
    """Hand-made study predictions of model A: 1-2 studies per patient, a mediocre model."""
    rng = np.random.default_rng(seed)
    rows = []
    for part, patients in PARTS.items():
        for patient in range(patients):
            for study in range(rng.integers(1, 3)):
                label = int(rng.random() < 0.5)
                rows.append(
                    (f"valid/XR_{part.upper()}/patient{patient:05d}/study{study + 1}_", f"{patient:05d}", part, label)
                )
    frame = pd.DataFrame(rows, columns=["study", "patient", "body_part", "label"])
    frame["prob"] = np.clip(0.5 + 0.15 * (frame["label"] - 0.5) + rng.normal(0, 0.2, len(frame)), 0, 1).round(3)
    return frame.assign(pred=(frame["prob"] > 0.5).astype(int))


def better_model(frame: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Model B: the same studies, much better on shoulder, the same on hand."""
    rng = np.random.default_rng(seed)
    shoulder = frame["body_part"] == "shoulder"
    prob = frame["prob"].where(~shoulder, (0.2 + 0.6 * frame["label"] + rng.normal(0, 0.1, len(frame))).clip(0, 1))
    return frame.assign(prob=prob, pred=(prob > 0.5).astype(int))


def write_run(folder, frame: pd.DataFrame):
    folder.mkdir(parents=True, exist_ok=True)
    rows = frame.assign(level="study", path=frame["study"])
    rows.sample(frac=1.0, random_state=0).to_csv(folder / TEST_FILE, index=False)  # another row order
    return folder


def run_compare(tmp_path, *overrides: str) -> pd.DataFrame:
    return compare(compose("compare", [f"output={tmp_path / 'out'}", SAMPLES, *overrides]))


@pytest.fixture
def runs(tmp_path):
    first = study_predictions()
    return write_run(tmp_path / "a", first), write_run(tmp_path / "b", better_model(first))


def test_compare_end_to_end_writes_the_table_the_markdown_and_the_forest_plot(runs, tmp_path):
    out = tmp_path / "out"
    finished = run_module("mura_lightning.compare", f"a={runs[0]}", f"b={runs[1]}", f"output={out}", SAMPLES)
    assert finished.returncode == 0, finished.stderr[-2000:]
    table = pd.read_csv(out / COMPARE_CSV)
    assert set(table["metric"]) == {"kappa", "auroc", "sensitivity", "specificity"}
    assert list(dict.fromkeys(table["body_part"])) == ["hand", "shoulder", "overall"]
    rows = table.set_index(["body_part", "metric"])
    # B is much better on shoulder, identical on hand
    assert rows.loc[("shoulder", "auroc"), "significant"] and rows.loc[("shoulder", "auroc"), "ci_low"] > 0
    assert rows.loc[("shoulder", "auroc"), "p_delong"] < 0.05 and rows.loc[("shoulder", "auroc"), "p_bootstrap"] < 0.05
    assert (rows.loc["hand", "difference"] == 0).all() and not rows.loc["hand", "significant"].any()
    assert rows.loc[("hand", "auroc"), "p_delong"] == 1.0 and rows.loc[("hand", "kappa"), "p_bootstrap"] == 1.0
    assert rows.xs("kappa", level="metric")["p_delong"].isna().all()
    # the values are the models' own: A from a's file, B from b's, aligned by study
    a, b = (pd.read_csv(run / TEST_FILE) for run in runs)
    shoulder_a, shoulder_b = a[a["body_part"] == "shoulder"], b[b["body_part"] == "shoulder"]
    delong = delong_test(
        shoulder_a.sort_values("study")["label"].to_numpy(),
        shoulder_a.sort_values("study")["prob"].to_numpy(),
        shoulder_b.sort_values("study")["prob"].to_numpy(),
    )
    assert rows.loc[("shoulder", "auroc"), ["a", "b"]].tolist() == pytest.approx([delong.auc_a, delong.auc_b])
    assert rows.loc[("shoulder", "auroc"), "p_delong"] == pytest.approx(delong.p_value)
    text = (out / COMPARE_MD).read_text()
    assert "| shoulder* | auroc |" in text and "| hand | kappa |" in text
    assert "| shoulder* | auroc |" in finished.stdout
    assert Image.open(out / COMPARE_PNG).size[0] > 400
    assert (out / ".hydra" / "config.yaml").is_file()
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def test_several_runs_against_a_reference(tmp_path):
    first = study_predictions()
    folders = [
        write_run(tmp_path / name, frame)
        for name, frame in (("a", first), ("b", better_model(first, 1)), ("c", better_model(first, 2)))
    ]
    table = run_compare(tmp_path, f"runs=[{folders[0]},{folders[1]},{folders[2]}]", f"reference={folders[1]}")
    assert set(zip(table["reference"], table["run"], strict=True)) == {
        (str(folders[1]), str(folders[0])),
        (str(folders[1]), str(folders[2])),
    }
    assert (tmp_path / "out" / COMPARE_PNG).is_file()


def test_runs_on_different_studies_are_refused_naming_how_many_and_some(tmp_path):
    first = study_predictions()
    a = write_run(tmp_path / "a", first)
    b = write_run(tmp_path / "b", first.iloc[3:])
    with pytest.raises(MuraError, match=rf"not tested on the same studies: 3 only in {a} \(valid/XR_HAND/.*\), 0 only"):
        run_compare(tmp_path, f"a={a}", f"b={b}")
    assert not (tmp_path / "out" / COMPARE_CSV).exists()


def test_labels_that_disagree_are_refused(tmp_path):
    first = study_predictions()
    second = first.copy()
    second.loc[[0, 5], "label"] = 1 - second.loc[[0, 5], "label"]
    a, b = write_run(tmp_path / "a", first), write_run(tmp_path / "b", second)
    with pytest.raises(MuraError, match=r"disagree on the label of 2 studies \(valid/XR_HAND/patient00000/study1_"):
        run_compare(tmp_path, f"a={a}", f"b={b}")


def test_a_missing_predictions_file_names_the_path_and_the_command(tmp_path):
    a = write_run(tmp_path / "a", study_predictions())
    (tmp_path / "b").mkdir()
    finished = run_module("mura_lightning.compare", f"a={a}", f"b={tmp_path / 'b'}", f"output={tmp_path / 'out'}")
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in finished.stderr
    assert f"{tmp_path / 'b' / TEST_FILE} does not exist" in errors[0]
    assert "python -m mura_lightning.evaluate ckpt_path=" in errors[0] and "training run" in errors[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["a=A"], "give the two folders to compare: a=DIR b=DIR"),
        (["a=A", "b=B", "runs=[A,B]"], "not both"),
        (["runs=[A,A]"], "must name at least two different folders"),
        (["runs=[A,B]", "reference=C"], "reference=C is not one of"),
        (["a=A", "b=B", "compared_metrics=[kappa,brier]"], r"compared_metrics=\['kappa', 'brier'\] must be some of"),
        (["a=A", "b=B", "metrics.bootstrap.samples=10"], "metrics.bootstrap.samples=10 must be"),
        (["a=A", "b=B", "metrics.bootstrap.confidence=1.5"], r"metrics.bootstrap.confidence=1.5 must be in \(0, 1\)"),
        (["a=/nonexistent/run", "b=B"], "/nonexistent/run is not a folder"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, overrides, message):
    overrides = [override.replace("=B", f"={tmp_path}") for override in overrides]
    with pytest.raises(MuraError, match=message):
        compare(compose("compare", [f"output={tmp_path / 'out'}", *overrides]))


def test_a_predictions_file_without_the_needed_columns_is_refused(tmp_path):
    a = write_run(tmp_path / "a", study_predictions())
    b = write_run(tmp_path / "b", study_predictions().drop(columns=["patient"]))
    with pytest.raises(MuraError, match=r"predictions_test.csv lacks the columns \['patient'\]"):
        run_compare(tmp_path, f"a={a}", f"b={b}")


def test_a_body_part_of_one_class_has_nan_auroc_and_a_warning_the_rest_is_computed(tmp_path, caplog):
    first = study_predictions()
    first.loc[first["body_part"] == "hand", "label"] = 1
    a, b = write_run(tmp_path / "a", first), write_run(tmp_path / "b", better_model(first))
    with caplog.at_level(logging.WARNING):
        table = run_compare(tmp_path, f"a={a}", f"b={b}").set_index(["body_part", "metric"])
    assert any(record.getMessage().startswith("hand: its studies hold one class only") for record in caplog.records)
    assert table.loc[("hand", "auroc"), ["a", "b", "ci_low", "ci_high", "p_bootstrap", "p_delong"]].isna().all()
    assert table.loc[("hand", "sensitivity"), ["a", "ci_low", "p_bootstrap"]].notna().all()
    assert table.loc[("overall", "auroc"), ["ci_low", "p_delong"]].notna().all()
    assert "| hand | auroc | NaN | NaN | NaN |" in (tmp_path / "out" / COMPARE_MD).read_text()


def describe_run(folder, model: str, overrides: list[str], **results) -> None:
    """Give a predictions folder the results.json and .hydra/overrides.yaml a run leaves."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    (folder / "results.json").write_text(json.dumps({"model": model, **results}))


def test_models_are_named_by_what_differs_between_them_not_by_their_folders(runs, tmp_path):
    describe_run(runs[0], "densenet169", ["experiment=demo", f"paths.root_dir={tmp_path}"])
    describe_run(runs[1], "resnet50", ["experiment=demo", "model=resnet50", "data.root=/elsewhere"])
    table = run_compare(tmp_path, f"a={runs[0]}", f"b={runs[1]}")
    assert set(table["reference_label"]) == {"densenet169"} and set(table["run_label"]) == {"resnet50"}
    assert "## B = resnet50 against A = densenet169" in (tmp_path / "out" / COMPARE_MD).read_text()
    assert list(pd.read_csv(tmp_path / "out" / COMPARE_CSV)["run_label"].unique()) == ["resnet50"]
    assert forest_plot(table, 0.95).get_suptitle().startswith("B = resnet50 vs A = densenet169")


def test_an_evaluation_is_named_by_its_training_runs_overrides_and_its_own(tmp_path):
    trained = tmp_path / "train" / "2026-01-01_10-00-00"
    describe_run(trained, "densenet169", ["experiment=demo", "optimizer.lr=0.01"])
    checkpoint = str(trained / "checkpoints" / "best-epoch003.ckpt")
    plain, flipped = tmp_path / "eval1", tmp_path / "eval2"
    for folder, own in ((plain, []), (flipped, ["tta=hflip"])):
        folder.mkdir()
        describe_run(folder, "densenet169", [f"ckpt_path={checkpoint}", *own], ckpt_paths=[checkpoint])
    assert run_labels([plain, flipped]) == {str(plain): "densenet169", str(flipped): "densenet169 tta=hflip"}
    again = tmp_path / "eval3"
    again.mkdir()
    describe_run(again, "densenet169", [f"ckpt_path={checkpoint}"], ckpt_paths=[checkpoint])
    assert run_labels([plain, again]) == {str(plain): "densenet169 eval1", str(again): "densenet169 eval3"}
    assert model_setting(flipped) == ("densenet169", ["experiment=demo", "optimizer.lr=0.01", "tta=hflip"])
