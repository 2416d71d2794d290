"""A search shared by several workers: two local processes or two SLURM jobs of the test cluster finish one study,
the trial of a worker killed (SIGKILL) or cancelled (scancel) mid-trial is failed by its silent heartbeat and
retried by the other worker, each worker takes its share of the cores, and bad settings are refused in a line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import optuna
import pytest
from helpers.runs import REPO_ROOT, run_module, tiny_run_overrides, wait_for
from helpers.search import FAST, LR_AND_LOSS, load_study, run_tune, short_heartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mura_lightning.cluster.slurm import JOB_FILE
from mura_lightning.errors import MuraError
from mura_lightning.io import ERROR_FILE, RESULTS_FILE
from mura_lightning.search.launch import JOB_LOG, WORKERS_DIR
from mura_lightning.search.storage import (
    HEARTBEAT_ATTR,
    STUDY_DB,
    STUDY_JOURNAL,
    Heartbeat,
    HeartbeatJournalStorage,
    storage_location,
)
from mura_lightning.search.study import WORKER_ATTR, LostTrial, Progress, fail_lost_trials, progress
from mura_lightning.search.worker import run_trials

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

SEARCH_TIMEOUT_S = 420  # a whole search, SLURM jobs queued behind others' included
KILL_TIMEOUT_S = 240  # until a worker runs a trial to kill
GRACE_S = 5  # a trial silent this long is lost: room for a live worker on a loaded 2-core machine
SLURM = [  # one CPU per worker job; the queue read every 2 s at most, so a cancelled worker is seen soon
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=20",
    "hydra.launcher.poll_s=2",
]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Epochs of each trial in the tests that kill a worker mid-trial: seen training, a tiny one-epoch trial can finish
# before the kill reaches it (scancel goes through the SLURM daemons), and then no trial is lost.
KILLED_SEARCH_EPOCHS = 4
FIRST_CHECKPOINT = "checkpoints/last.ckpt"  # a trial's fit has run an epoch


def search_args(root: Path, out: Path, n_trials: int, *extra: str, epochs: int = 1) -> list[str]:
    """A 2-worker search of `n_trials` tiny trials of `epochs` epochs over lr and loss, lost trials found after
    GRACE_S seconds."""
    tiny = [o for o in tiny_run_overrides(root, out) if not o.startswith("trainer.max_epochs=")]
    return [
        *tiny,
        f"trainer.max_epochs={epochs}",
        *FAST,
        *LR_AND_LOSS,
        *short_heartbeat(GRACE_S),
        f"hparams_search.n_trials={n_trials}",
        "hparams_search.n_workers=2",
        *extra,
    ]


def study_folder(out: Path) -> Path | None:
    """The one study folder of the search writing into `out` (None before it exists)."""
    folders = list((out / "outputs" / "tune").glob("*/"))
    return folders[0] if folders else None


def training_trial(out: Path, *written: str) -> FrozenTrial | None:
    """A trial a worker is training now: running, its worker recorded and its run folder composed (with the
    files `written`)."""
    study_dir = study_folder(out)
    if study_dir is None or not (study_dir / STUDY_JOURNAL).is_file():
        return None
    for trial in load_study(study_dir).get_trials(states=(TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir")
        files = [Path(run_dir or "", name) for name in (".hydra/overrides.yaml", *written)]
        if WORKER_ATTR in trial.user_attrs and run_dir and all(path.is_file() for path in files):
            return trial
    return None


def start_search(args: list[str]) -> subprocess.Popen:
    """The tune command in its own process group (so a failed test can end it and its local workers)."""
    command = [sys.executable, "-m", "mura_lightning.tune", *args]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def stop_search(process: subprocess.Popen) -> None:
    """End the search's process group if it still runs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def slurm_arrays(out: Path) -> set[str]:
    """The SLURM job arrays of the search's workers, from submitit's folders (<array>_<task>)."""
    study_dir = study_folder(out)
    folders = (study_dir / WORKERS_DIR / ".submitit").iterdir() if study_dir else []
    return {found[1] for folder in folders if (found := re.fullmatch(r"(\d+)_\d+", folder.name))}


def cancel_jobs(out: Path) -> None:
    """Cancel this test's SLURM workers (nothing when they ended)."""
    for array in slurm_arrays(out):
        subprocess.run(["scancel", array], check=False, capture_output=True)


def assert_study_with_retry(study_dir: Path, n_trials: int, lost: FrozenTrial | None) -> list[FrozenTrial]:
    """The study has `n_trials` complete or pruned trials, each in a folder of its own, and the `lost` trial failed
    with error.txt saying why and retried once with its values by another worker; its trials."""
    trials = load_study(study_dir).get_trials()
    assert [trial.number for trial in trials] == list(range(n_trials + (lost is not None)))
    finished = [trial for trial in trials if trial.state in FINISHED]
    assert len(finished) == n_trials, [trial.state for trial in trials]
    folders = {trial.user_attrs["run_dir"] for trial in trials}
    assert len(folders) == len(trials) and all(Path(folder).parent == study_dir for folder in folders)
    for trial in finished:
        assert Path(trial.user_attrs["run_dir"], ".hydra", "overrides.yaml").is_file()
        assert trial.state == TrialState.PRUNED or Path(trial.user_attrs["run_dir"], RESULTS_FILE).is_file()
    if lost is not None:
        failed = trials[lost.number]
        assert failed.state == TrialState.FAIL
        assert "lost: its worker stopped" in Path(failed.user_attrs["run_dir"], ERROR_FILE).read_text()
        (retry,) = [trial for trial in trials if trial.system_attrs.get("retry_history") == [lost.number]]
        assert retry.state in FINISHED and retry.params == lost.params
        assert retry.user_attrs[WORKER_ATTR] != lost.user_attrs[WORKER_ATTR], "the other worker retried it"
    return trials


def worker_logs(study_dir: Path) -> list[str]:
    """The two workers' logs."""
    logs = sorted((study_dir / WORKERS_DIR).glob(f"*/{JOB_LOG}"))
    assert len(logs) == 2, logs
    return [path.read_text() for path in logs]


def test_two_local_workers_finish_a_study_and_retry_the_trial_of_one_killed(mura_root, tmp_path):
    process = start_search(search_args(mura_root, tmp_path, 2, epochs=KILLED_SEARCH_EPOCHS))
    try:
        victim = wait_for(lambda: training_trial(tmp_path), KILL_TIMEOUT_S, "a trial in training", process)
        pid = int(victim.user_attrs[WORKER_ATTR].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=SEARCH_TIMEOUT_S)
    finally:
        stop_search(process)
    assert process.returncode == 0, stderr[-3000:]
    study_dir = study_folder(tmp_path)
    trials = assert_study_with_retry(study_dir, 2, victim)
    assert len({trial.user_attrs[WORKER_ATTR] for trial in trials}) == 2, "both workers ran trials"
    assert "trials: " in stdout and "1 of them lost with their worker and retried" in stdout
    assert "a worker ended without a result" in stdout
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)
    for text in worker_logs(study_dir):
        expected = f"{share} core(s) from {cores} cores (os.sched_getaffinity) // 2 workers: torch threads {share}"
        assert expected in text and "data.num_workers=0 (asked 0)" in text


def test_two_slurm_workers_finish_a_four_trial_study(slurm_cluster, mura_root, tmp_path):
    try:
        result = run_module(
            "mura_lightning.tune", *search_args(mura_root, tmp_path, 4, *SLURM), timeout=SEARCH_TIMEOUT_S
        )
    finally:
        cancel_jobs(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study_dir = study_folder(tmp_path)
    trials = assert_study_with_retry(study_dir, 4, lost=None)
    (array,) = slurm_arrays(tmp_path)
    job_ids = {json.loads(Path(trial.user_attrs["run_dir"], JOB_FILE).read_text())["job_id"] for trial in trials}
    assert job_ids <= {f"{array}_0", f"{array}_1"}, job_ids
    for text in worker_logs(study_dir):
        assert "1 core(s) from SLURM_CPUS_PER_TASK=1: torch threads 1" in text


def test_a_cancelled_slurm_worker_leaves_its_trial_to_the_other(slurm_cluster, mura_root, tmp_path):
    process = start_search(search_args(mura_root, tmp_path, 2, *SLURM, epochs=KILLED_SEARCH_EPOCHS))
    try:
        # scancel sends SIGCONT and SIGTERM (also with --signal=KILL), then SIGKILL KillWait seconds later (30 here).
        # submitit's job ignores SIGTERM outside Lightning's fit, where a tiny trial would then finish; so the job is
        # cancelled once its trial has saved a checkpoint, inside the fit, where Lightning stops at the next batch.
        victim = wait_for(
            lambda: training_trial(tmp_path, JOB_FILE, FIRST_CHECKPOINT), KILL_TIMEOUT_S, "a trial in its fit", process
        )
        job_id = json.loads(Path(victim.user_attrs["run_dir"], JOB_FILE).read_text())["job_id"]
        subprocess.run(["scancel", job_id], check=True)
        stdout, stderr = process.communicate(timeout=SEARCH_TIMEOUT_S)
    finally:
        stop_search(process)
        cancel_jobs(tmp_path)
    assert process.returncode == 0, stderr[-3000:]
    assert_study_with_retry(study_folder(tmp_path), 2, victim)
    assert "1 of them lost with their worker and retried" in stdout
    assert re.search(rf"worker \d failed: .*ended without a result \({job_id}: ", stdout), "the cancelled job is named"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hparams_search.n_workers=0"], r"hparams_search.n_workers in conf/hparams_search/optuna.yaml .* is 0; give"),
        (["hparams_search.n_workers=two"], r"hparams_search.n_workers in .* is 'two'; give a whole number, 1 or more"),
        (
            ["hparams_search.storage=sqlite:////no/such/folder/optuna.db"],
            r"hparams_search.storage=sqlite:////no/such/folder/optuna.db cannot be opened \(OperationalError: .*"
            r"unable to open database file.*\); check the URL",
        ),
        (
            ["hparams_search.storage=postgresql://mura:secret@127.0.0.1:9/optuna"],
            r"hparams_search.storage=postgresql://mura:\*\*\*@127.0.0.1:9/optuna cannot be opened .*; check the URL, "
            r"that the server answers and its Python driver is installed",
        ),
        (
            ["hparams_search.storage=sqlite:///optuna.db", "hparams_search.n_workers=2"],
            r"sqlite:///optuna.db with hparams_search.n_workers=2: several workers cannot share an SQLite database; "
            r"leave hparams_search.storage unset .*optuna.journal\), or give a database server's URL",
        ),
        (
            ["hparams_search.grace_period=60"],
            r"hparams_search.grace_period=60 .* is not longer than heartbeat_interval=60: .*e.g. 180",
        ),
    ],
)
def test_bad_worker_settings_are_refused_with_what_to_use(mura_root, tmp_path, overrides, message):
    with pytest.raises(MuraError, match=message) as refusal:
        run_tune(mura_root, tmp_path, *overrides)
    assert "\n" not in str(refusal.value) and "secret" not in str(refusal.value)
    assert not list(tmp_path.glob("outputs/tune/*/0_*")), "no trial ran"


def test_a_study_is_never_forked_into_a_second_storage(tmp_path):
    assert storage_location(None, tmp_path, 1) == f"sqlite:///{tmp_path / STUDY_DB}"
    assert storage_location(None, tmp_path, 3) == str(tmp_path / STUDY_JOURNAL)
    (tmp_path / STUDY_JOURNAL).touch()  # a study of several workers resumes in its journal with one
    assert storage_location(None, tmp_path, 1) == str(tmp_path / STUDY_JOURNAL)
    assert storage_location(str(tmp_path / STUDY_JOURNAL), tmp_path, 2) == str(tmp_path / STUDY_JOURNAL)
    with pytest.raises(MuraError, match=r"storage=mysql://u:\*\*\*@db/s: this search's study is already in .*journal"):
        storage_location("mysql://u:pw@db/s", tmp_path, 2)
    (tmp_path / STUDY_JOURNAL).unlink()
    (tmp_path / STUDY_DB).touch()  # one worker's SQLite study
    with pytest.raises(MuraError, match=r"n_workers=2: .*SQLite database .*optuna.db \(made with one worker\), which"):
        storage_location(None, tmp_path, 2)
    (tmp_path / STUDY_DB).unlink()
    (tmp_path / "storage.txt").write_text("postgresql://u:***@db/s\n")  # made in a server's database
    with pytest.raises(MuraError, match=r"made in postgresql://u:\*\*\*@db/s \(see .*storage.txt\): resume it with"):
        storage_location(None, tmp_path, 2)
    assert storage_location("postgresql://u:pw@db/s", tmp_path, 2) == "postgresql://u:pw@db/s"
    with pytest.raises(MuraError, match=r"storage=postgresql://u:\*\*\*@db/t: this search's study was made in"):
        storage_location("postgresql://u:pw@db/t", tmp_path, 2)


def journal_study(tmp_path: Path) -> tuple[optuna.Study, Heartbeat]:
    """A study in a journal file with the heartbeat: a trial silent for 5 s is lost, retried once."""
    heartbeat = Heartbeat(interval=1, grace_period=5, retries=1)
    backend = JournalFileBackend(str(tmp_path / STUDY_JOURNAL))
    return optuna.create_study(storage=HeartbeatJournalStorage(backend, heartbeat, LostTrial(heartbeat))), heartbeat


def running_trial(study: optuna.Study, beat_age_s: float | None, beat_of: int | None = None, **attrs) -> int:
    """A running trial, its worker recorded unless `attrs` say otherwise, its last beat `beat_age_s` seconds ago
    (none when None) recorded for trial id `beat_of` (its own when None)."""
    started = attrs.pop("started_s_ago", 0)
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs or {WORKER_ATTR: "worker 0"})
    template.datetime_start = datetime.now(timezone.utc) - timedelta(seconds=started)
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    if beat_age_s is not None:
        beat = [trial_id if beat_of is None else beat_of, time.time() - beat_age_s]
        study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, beat)
    return trial_id


def test_silent_trials_are_failed_and_queued_again_and_live_ones_never(tmp_path):
    study, heartbeat = journal_study(tmp_path)
    silent = running_trial(study, beat_age_s=10)
    live = running_trial(study, beat_age_s=1)
    inherited = running_trial(study, beat_age_s=10, beat_of=silent)  # a retry holding its predecessor's old beat
    old_search = running_trial(study, None, started_s_ago=60, run_dir="")  # no worker recorded: before heartbeats
    new_search = running_trial(study, None, run_dir="")  # the same, started just now: maybe alive
    fail_lost_trials(study, heartbeat)
    trials = study.get_trials()
    states = {trial._trial_id: trial.state for trial in trials}
    assert {trial_id for trial_id, state in states.items() if state == TrialState.FAIL} == {silent, old_search}
    assert all(states[trial_id] == TrialState.RUNNING for trial_id in (live, inherited, new_search))
    queued = [trial.system_attrs["retry_history"] for trial in trials if trial.state == TrialState.WAITING]
    assert queued == [[silent], [old_search]], "each lost trial is queued again, once"
    assert progress(study) == Progress(finished=0, running=3, waiting=2, retried=2)
    fail_lost_trials(study, heartbeat)
    assert len(study.get_trials()) == len(trials), "a failed trial is not retried twice"


class TakenAsLostMeanwhile:
    """An objective whose first trial another worker fails as lost while it still runs."""

    number = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.number = trial.number
        if trial.number == 0:
            storage = trial.storage
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            storage.get_heartbeat_stale_trial_callback()(trial.study, storage.get_trial(trial._trial_id))
        return 1.0


def test_a_worker_whose_trial_was_taken_as_lost_drops_its_result_and_goes_on(tmp_path, caplog):
    study, heartbeat = journal_study(tmp_path)
    assert run_trials(study, TakenAsLostMeanwhile(), 2, heartbeat) == 3
    trials = study.get_trials()
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].system_attrs["retry_history"] == [0] and trials[1].params == trials[0].params
    assert "trial 0 was taken as lost while this worker still ran it" in caplog.text


def test_local_workers_without_the_submitit_launcher_say_how_to_install_it(monkeypatch):
    from mura_lightning.search.launch import SUBMITIT_PLUGIN, require_local_launcher

    monkeypatch.setitem(sys.modules, SUBMITIT_PLUGIN, None)
    with pytest.raises(MuraError, match=r"submitit launcher, which is not installed: pip install 'mura-lightning\["):
        require_local_launcher()


def test_a_worker_takes_slurms_cpus_in_a_slurm_job_and_its_share_of_this_machine_otherwise(monkeypatch):
    from mura_lightning.search.worker import cpu_share

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert cpu_share(4) == (6, "SLURM_CPUS_PER_TASK=6")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # local workers started inside an allocation share it
    cores = len(os.sched_getaffinity(0))
    assert cpu_share(2) == (max(1, cores // 2), f"{cores} cores (os.sched_getaffinity) // 2 workers")
    assert cpu_share(cores * 2)[0] == 1
    assert re.fullmatch(r"\d+ cores \(os.sched_getaffinity\) // 1 workers", cpu_share(1)[1])
