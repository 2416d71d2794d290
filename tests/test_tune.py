"""The Optuna search: kill and resume, failed and pruned trials, the report, and bad search spaces."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers.runs import REPO_ROOT, compose, run_module, tiny_run_overrides
from helpers.search import FAST, LR_AND_LOSS, load_study, run_tune, short_heartbeat
from optuna.trial import TrialState

from mura_lightning.dirnames import MAX_DIRNAME_LENGTH
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, PRUNED_FILE, RESULTS_FILE
from mura_lightning.search import require_optuna
from mura_lightning.search.space import overrides, parse_space
from mura_lightning.search.storage import STUDY_DB
from mura_lightning.search.study import SETTINGS_ATTR, check_settings

ONLY_BATCH = [
    "~hparams_search.params.lr",
    "~hparams_search.params.loss",
    "~hparams_search.params.gamma",
    "~hparams_search.params.weight_decay",
    "~hparams_search.params.rotation",
]
UNIT = {"type": "float", "low": 0, "high": 1}
CHOICE_A = {"type": "categorical", "choices": ["a"]}
OUTPUTS = ("trials.csv", "best_overrides.txt", "optimization_history.png", "param_importances.png")


def trial_states(database: Path) -> list[str]:
    """The states of the trials stored so far (empty while the database is not written yet)."""
    if not database.is_file():
        return []
    try:
        with sqlite3.connect(database, timeout=1) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:
        return []


def test_a_killed_search_resumes_with_the_same_command_and_reaches_n_trials(mura_root, tmp_path):
    args = [*tiny_run_overrides(mura_root, tmp_path), *FAST, *LR_AND_LOSS, "hparams_search.n_trials=4"]
    args += short_heartbeat(3)  # the killed trial is lost 3 s after its last beat
    command = [sys.executable, "-m", "mura_lightning.tune", *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tune_dir = tmp_path / "outputs" / "tune"
    deadline = time.monotonic() + 300
    states: list[str] = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            databases = list(tune_dir.glob(f"*/{STUDY_DB}"))
            states = trial_states(databases[0]) if databases else []
            finished = sum(state != "RUNNING" for state in states)
            running_dir = databases[0].parent.glob(f"{finished}_*/.hydra/overrides.yaml") if databases else []
            if finished >= 2 and "RUNNING" in states and any(running_dir):  # killed while the third one trains
                break
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert states.count("RUNNING") == 1 and len(states) == 3, f"killed at the wrong moment: {states}"

    result = run_module("mura_lightning.tune", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Seed set to") == 2, "the retried trial and the last one each seed once, printed once"
    assert not re.search(r"^INFO: ", result.stderr, flags=re.MULTILINE), "Lightning's own handler printed a line"
    (study_dir,) = tune_dir.iterdir()  # the same command found the same study
    trials = load_study(study_dir).get_trials()
    assert [trial.number for trial in trials] == [0, 1, 2, 3, 4], "the lost trial's retry joined the 4"
    assert trials[2].state == TrialState.FAIL, "the interrupted trial is failed"
    assert all(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials if trial.number != 2)
    (retry,) = [trial for trial in trials if trial.system_attrs.get("retry_history") == [2]]
    assert retry.params == trials[2].params and retry.user_attrs["run_dir"] != trials[2].user_attrs["run_dir"]
    assert "lost: its worker stopped" in (Path(trials[2].user_attrs["run_dir"]) / ERROR_FILE).read_text()
    assert "1 of them lost with their worker and retried" in result.stdout and "best overrides" in result.stdout
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == study_dir and run_dir.name.startswith(f"{trial.number}_lr-")
        assert (run_dir / ".hydra" / "overrides.yaml").is_file()
        if trial.state == TrialState.COMPLETE:
            assert list((run_dir / "tensorboard").glob("events.*"))
            assert (run_dir / RESULTS_FILE).is_file()
            assert ("loss.gamma=" in (run_dir / ".hydra" / "overrides.yaml").read_text()) == ("gamma" in trial.params)
    for name in OUTPUTS[:3]:
        assert (study_dir / name).stat().st_size > 0
    best = (study_dir / "best_overrides.txt").read_text().split()
    assert best[0].startswith("optimizer.lr=") and best[1] in ("loss=weighted_bce", "loss=focal")

    again = run_module("mura_lightning.tune", *args)  # all trials exist: only the report is written again
    assert again.returncode == 0 and len(load_study(study_dir).get_trials()) == 5


def test_a_failing_trial_is_recorded_and_the_search_goes_on(mura_root, tmp_path):
    result, study_dir = run_tune(
        mura_root,
        tmp_path,
        *ONLY_BATCH,
        "hparams_search.params.batch_size.choices=[4,0]",  # a batch size of 0 cannot train
        "hparams_search.sampler._target_=optuna.samplers.BruteForceSampler",
        "~hparams_search.sampler.n_startup_trials",
        "hparams_search.n_trials=2",
    )
    assert result == {"complete": 1, "pruned": 0, "fail": 1}
    trials = {trial.params["batch_size"]: trial for trial in load_study(study_dir).get_trials()}
    assert trials[0].state == TrialState.FAIL and trials[4].state == TrialState.COMPLETE
    failed_dir = Path(trials[0].user_attrs["run_dir"])
    assert "batch_size" in (failed_dir / ERROR_FILE).read_text()
    assert (study_dir / "best_overrides.txt").read_text() == "data.batch_size=4\n"
    assert not (study_dir / "param_importances.png").exists(), "importances need 2 completed trials"


def test_the_pruner_stops_trials_after_their_first_epoch(mura_root, tmp_path):
    result, study_dir = run_tune(
        mura_root,
        tmp_path,
        *ONLY_BATCH,
        "hparams_search.params.batch_size.choices=[4]",
        "trainer.max_epochs=3",
        "~hparams_search.pruner",
        "+hparams_search.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hparams_search.pruner.lower=2.0",  # kappa is never above 1: every trial is pruned at its first report
        "hparams_search.n_trials=2",
    )
    assert result == {"complete": 0, "pruned": 2, "fail": 0}
    for trial in load_study(study_dir).get_trials():
        run_dir = Path(trial.user_attrs["run_dir"])
        reason = (run_dir / PRUNED_FILE).read_text()
        assert reason.startswith("pruned after 1 of 3 epochs (current_epoch 0): val/study/kappa = ")
        assert list(trial.intermediate_values) == [0] and not (run_dir / RESULTS_FILE).exists()
    assert not (study_dir / "best_overrides.txt").exists() and (study_dir / "trials.csv").is_file()


def test_searches_that_differ_only_far_into_a_long_command_get_studies_of_their_own(mura_root, tmp_path):
    def study_dir(epochs: int) -> Path:  # resolved while its command's HydraConfig is set
        return Path(
            compose("tune", [*tiny_run_overrides(mura_root, tmp_path), *FAST, f"trainer.max_epochs={epochs}"]).study_dir
        )

    two, three = study_dir(2), study_dir(3)
    assert two != three and max(len(two.name), len(three.name)) <= MAX_DIRNAME_LENGTH


def test_a_study_resumed_with_other_settings_is_refused_naming_the_difference(mura_root, tmp_path):
    named = [*ONLY_BATCH, "hparams_search.params.batch_size.choices=[4]", "hparams_search.study_name=shared"]
    result, study_dir = run_tune(mura_root, tmp_path, *named, "hparams_search.n_trials=1")
    assert result == {"complete": 1, "pruned": 0, "fail": 0}
    message = (
        r"study shared in .*optuna.db was created with other settings: optimizer.weight_decay=0.001 \(given now, "
        r"not when the study was created\)\. To start another search, give it another name "
        r"\(hparams_search.study_name=NAME\); to resume this one, run it with the settings it was created with: "
        r"bodypart=\[shoulder,wrist\] .*hparams_search.study_name=shared"
    )
    with pytest.raises(MuraError, match=message):
        run_tune(mura_root, tmp_path, *named, "hparams_search.n_trials=2", "optimizer.weight_decay=0.001")
    assert len(load_study(study_dir).get_trials()) == 1, "no trial of the other settings joined the study"


def test_a_study_from_before_settings_were_recorded_resumes_and_records_them(tmp_path):
    study = optuna.create_study(study_name="old", storage=f"sqlite:///{tmp_path / STUDY_DB}")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    check_settings(study, tmp_path, ["a=1", "b=x"])
    assert study.user_attrs[SETTINGS_ATTR] == ["a=1", "b=x"]
    check_settings(study, tmp_path, ["a=1", "b=x"])
    with pytest.raises(MuraError, match=r"settings: a=2 \(created with a=1\); b=x \(given when the study was created"):
        check_settings(study, tmp_path, ["a=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hparams_search.n_trials=0", r"hparams_search.n_trials in conf/hparams_search/optuna.yaml .* is 0"),
        ("hparams_search.params.lr.type=real", r"hparams_search.params.lr in conf/hparams_search/optuna.yaml .*'real'"),
        ("hparams_search.params.lr.low=0.1", r"params.lr in .*optuna.yaml.*: low \(0.1\) must be below high \(0.01\)"),
        ("hparams_search.params.loss.choices=[]", r"params.loss in .*: .*non-empty list of choices, not \[\]"),
        ("+hparams_search.params.gamma.when.lost=focal", r"params.gamma in .*: when names 'lost', not a parameter"),
        ("hparams_search.direction=up", r"hparams_search.direction in .*optuna.yaml.* is 'up'; use max or min"),
    ],
)
def test_bad_search_settings_name_the_value_and_the_file(mura_root, tmp_path, override, message):
    with pytest.raises(MuraError, match=message):
        run_tune(mura_root, tmp_path, override)
    assert not list(tmp_path.glob("outputs/tune/*/0_*")), "no trial ran"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"x": {"type": "int", "low": 3, "high": 3}}, r"params.x in f.yaml: low \(3\) must be below high \(3\)"),
        ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, r"log-scale range needs low > 0, not 0"),
        ({"x": {"type": "float", "low": 1, "hgih": 2}}, r"unknown field\(s\) hgih"),
        ({"x": {"type": "int", "low": 0.5, "high": 2}}, r"low must be an integer, not 0.5"),
        ({"x": {"type": "categorical", "choices": [1], "low": 0}}, r"takes choices, not low"),
        ({"x": {**UNIT, "when": {"y": "a"}}, "y": CHOICE_A}, r"when names 'y', not a parameter listed before it"),
        ({"y": CHOICE_A, "x": {**UNIT, "when": {"y": "b"}}}, r"when y is 'b', which is not among its choices \['a'\]"),
        ({}, "hparams_search.params in f.yaml is empty"),
    ],
)
def test_bad_parameter_specs_are_named(spec, message):
    with pytest.raises(MuraError, match=message):
        parse_space(spec, "f.yaml")


def test_conditional_parameters_and_override_lines():
    space = parse_space(
        {
            "loss": {"type": "categorical", "choices": ["weighted_bce", "focal"]},
            "gamma": {"key": "loss.gamma", "type": "float", "low": 0.5, "high": 5.0, "when": {"loss": "focal"}},
        },
        "f.yaml",
    )
    focal = {"loss": "focal", "gamma": 2.5}
    assert space[1].active(focal) and not space[1].active({"loss": "weighted_bce"})
    assert overrides(space, focal) == ["loss=focal", "loss.gamma=2.5"]


def test_missing_optuna_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MuraError, match=r"pip install 'mura-lightning\[search\]'"):
        require_optuna()
