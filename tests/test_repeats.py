"""Repeat groups in a sweep summary: jobs differing only in data.fold and/or seed, their mean ± sd, and their
pooled out-of-fold predictions scored against scikit-learn, with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.evaluation.outputs import PREDICTION_COLUMNS
from mura_lightning.evaluation.repeats import group_label
from mura_lightning.summarize import GROUPS_CSV, POOLED_CSV, REPEATS_CSV, SUMMARY_MD, main, summarize

SETTINGS = BootstrapSettings(samples=200, seed=1)
PARTS = ("hand", "wrist")


def val_studies(fold: int, num_folds: int, studies_per_fold: int, seed: int) -> pd.DataFrame:
    """The val study predictions of one fold: its own studies (two per patient), both parts and labels."""
    rng = np.random.default_rng(seed)
    ids = range(fold * studies_per_fold, (fold + 1) * studies_per_fold)
    frame = pd.DataFrame(
        {
            "study": [f"train/XR_{PARTS[i % 2].upper()}/patient{i // 2:05d}/study{i % 2 + 1}_positive" for i in ids],
            "patient": [f"{i // 2:05d}" for i in ids],
            "body_part": [PARTS[i % 2] for i in ids],
            "label": [(i // 3) % 2 for i in ids],
        }
    )
    frame["prob"] = np.clip(0.3 + 0.4 * frame["label"] + rng.normal(0, 0.25, len(frame)), 0, 1).round(4)
    return frame


def write_member(sweep: Path, name: str, overrides: list[str], studies: pd.DataFrame | None, kappa: float, **extra):
    """A finished job folder: overrides, results.json and (unless `studies` is None) predictions_val.csv."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra/overrides.yaml").write_text("".join(f"- {override}\n" for override in overrides))
    results = {"test/study/kappa": kappa, "val/study/kappa": kappa - 0.1, "test/study/auroc": 0.9, "val/threshold": 0.5}
    results.update({"test/study/kappa/hand": kappa / 2, "model": "densenet169", "body_parts": list(PARTS), **extra})
    (job / "results.json").write_text(json.dumps(results))
    if studies is not None:
        rows = studies.assign(level="study", path=studies["study"], pred=(studies["prob"] > 0.5).astype(int))
        rows[PREDICTION_COLUMNS].to_csv(job / "predictions_val.csv", index=False)
    return job


@pytest.fixture
def cv_sweep(tmp_path) -> tuple[Path, list[pd.DataFrame]]:
    """Two settings x 3 folds: densenet169 all finished, resnet50 with fold 1 failed."""
    sweep = tmp_path / "sweep"
    folds = [val_studies(fold, 3, 40, seed=fold) for fold in range(3)]
    kappas = [0.6, 0.7, 0.8]
    for fold in range(3):
        common = ["bodypart=[hand,wrist]", "experiment=cv", f"data.fold={fold}"]
        write_member(sweep, f"{fold}_densenet", ["model=densenet169", *common], folds[fold], kappas[fold])
        name = f"{fold + 3}_resnet"
        if fold == 1:
            job = sweep / name
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in ["model=resnet50", *common]))
            (job / "error.txt").write_text("RuntimeError: out of memory\n")
        else:
            write_member(sweep, name, ["model=resnet50", *common], folds[fold], 0.3 + fold / 10)
    return sweep, folds


def test_group_labels_leave_out_the_fold_and_the_seed():
    assert group_label(["model=resnet50", "data.fold=2", "seed=3", "bodypart=wrist"]) == "model=resnet50 bodypart=wrist"
    assert group_label(["data.fold=0", "+seed=1"]) == "(no other overrides)"


def test_groups_average_the_finished_repeats_and_list_the_others(cv_sweep):
    sweep, _ = cv_sweep
    summary = summarize(sweep, bootstrap=SETTINGS)
    groups = summary["repeat_groups"].set_index("group")
    densenet = groups.loc["model=densenet169 bodypart=[hand,wrist] experiment=cv"]
    assert densenet["repeats"] == "3 of 3" and densenet["left out"] == ""
    kappas = np.array([0.6, 0.7, 0.8])
    assert densenet["test/study/kappa"] == f"{kappas.mean():.3f} ± {kappas.std(ddof=1):.3f}"
    resnet = groups.loc["model=resnet50 bodypart=[hand,wrist] experiment=cv"]
    assert resnet["repeats"] == "2 of 3" and resnet["left out"] == "4_resnet (failed)"
    statistics = pd.read_csv(sweep / REPEATS_CSV).set_index(["group", "metric"])
    row = statistics.loc[("model=resnet50 bodypart=[hand,wrist] experiment=cv", "test/study/kappa")]
    assert row["repeats"] == 2 and row["mean"] == pytest.approx(np.mean([0.3, 0.5]))
    part = statistics.loc[("model=densenet169 bodypart=[hand,wrist] experiment=cv", "test/study/kappa/hand")]
    assert part["mean"] == pytest.approx(kappas.mean() / 2) and part["sd"] == pytest.approx(kappas.std(ddof=1) / 2)
    report = (sweep / SUMMARY_MD).read_text()
    assert "## Repeat groups" in report and "4_resnet (failed)" in report
    assert (sweep / GROUPS_CSV).is_file()


def test_the_pooled_out_of_fold_metrics_match_scikit_learn_with_an_interval(cv_sweep):
    sweep, folds = cv_sweep
    summarize(sweep, bootstrap=SETTINGS)
    pooled = pd.read_csv(sweep / POOLED_CSV).set_index(["group", "body_part"])
    every = pd.concat(folds, ignore_index=True)
    row = pooled.loc[("model=densenet169 bodypart=[hand,wrist] experiment=cv", "overall")]
    assert row["studies"] == len(every) == 120
    assert row["auroc"] == pytest.approx(roc_auc_score(every["label"], every["prob"]))
    assert row["kappa"] == pytest.approx(cohen_kappa_score(every["label"], every["prob"] > 0.5))
    assert row["kappa_ci_low"] < row["kappa"] < row["kappa_ci_high"]
    hand = every[every["body_part"] == "hand"]
    hand_row = pooled.loc[("model=densenet169 bodypart=[hand,wrist] experiment=cv", "hand")]
    assert hand_row["auroc"] == pytest.approx(roc_auc_score(hand["label"], hand["prob"]))
    resnet = pooled.loc[("model=resnet50 bodypart=[hand,wrist] experiment=cv", "overall")]
    assert resnet["studies"] == len(folds[0]) + len(folds[2]), "the failed fold's predictions are not pooled"


def test_a_study_repeated_over_seeds_is_pooled_once_with_its_mean_probability(tmp_path):
    sweep = tmp_path / "sweep"
    seeds = [val_studies(0, 1, 60, seed=seed) for seed in (1, 2)]
    for seed, studies in zip((1, 2), seeds, strict=True):
        write_member(sweep, f"{seed}_seed", ["model=densenet169", f"seed={seed}"], studies, 0.5)
    summary = summarize(sweep, bootstrap=SETTINGS)
    mean_prob = (seeds[0]["prob"] + seeds[1]["prob"]) / 2
    overall = summary["repeat_pooled"].set_index("body_part").loc["overall"]
    assert overall["studies"] == 60
    assert overall["auroc"] == pytest.approx(roc_auc_score(seeds[0]["label"], mean_prob))


def test_a_member_without_val_predictions_is_averaged_but_not_pooled(tmp_path):
    sweep = tmp_path / "sweep"
    write_member(sweep, "0_a", ["data.fold=0"], val_studies(0, 2, 30, seed=0), 0.6)
    write_member(sweep, "1_b", ["data.fold=1"], None, 0.8)
    groups = summarize(sweep, bootstrap=SETTINGS)["repeat_groups"].set_index("group")
    row = groups.loc["(no other overrides)"]
    assert row["repeats"] == "2 of 2" and row["pooled studies"] == 30
    assert row["left out"] == "1_b (no predictions_val.csv)"


def test_a_sweep_without_repeats_has_no_group_files(tmp_path):
    sweep = tmp_path / "sweep"
    for n, part in enumerate(("hand", "wrist")):
        write_member(sweep, f"{n}_{part}", [f"bodypart={part}"], val_studies(n, 2, 20, seed=n), 0.5)
    summary = summarize(sweep, bootstrap=SETTINGS)
    assert summary["repeat_groups"].empty
    assert not (sweep / GROUPS_CSV).exists() and "Repeat groups" not in (sweep / SUMMARY_MD).read_text()


def test_the_command_prints_the_groups(cv_sweep, capsys):
    sweep, _ = cv_sweep
    main([str(sweep), "--bootstrap-samples", "200"])
    out = capsys.readouterr().out
    assert "repeat groups" in out and "3 of 3" in out and "2 of 3" in out


def test_too_few_bootstrap_samples_is_a_clear_error(cv_sweep):
    sweep, _ = cv_sweep
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--bootstrap-samples", "5"])
    assert exit_info.value.code == 2
