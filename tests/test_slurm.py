"""Sweeps through a real SLURM cluster (the one-node test cluster of tests/slurm/start.sh): jobs submitted with
sbatch, a failed job in the summary, a preempted job requeued and resumed; the launcher's multi-node sizing; clear
errors when SLURM is missing or refuses. Tests that need the cluster are skipped when `sinfo` does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.runs import REPO_ROOT, compose, run_module, wait_for
from helpers.slurm import (
    START_CLUSTER,
    SWEEP_TIMEOUT_S,
    cluster_answer,
    job_folders,
    slurm_sweep_args,
    sweep_folder,
)

from mura_lightning.cluster.slurm import JOB_FILE, hpc_checkpoint_path, requeue_signal
from mura_lightning.errors import MuraError
from mura_lightning.summarize import summarize

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

PREEMPT_EPOCHS = 4  # the signal, sent once epoch 0 is saved, lands well inside the fit even on a loaded machine
PREEMPT_BATCHES = 4  # fewer than the 5 training batches of the shoulder tree


def test_a_sweep_runs_as_slurm_jobs_and_summarize_lists_them(slurm_cluster, mura_root, tmp_path):
    started = time.monotonic()
    result = run_module("mura_lightning.train", *slurm_sweep_args(mura_root, tmp_path, "bodypart=shoulder,wrist"))
    print(f"2-job SLURM sweep: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    jobs = job_folders(sweep)
    assert [job.name.split("__")[0] for job in jobs] == ["0_bodypart-shoulder", "1_bodypart-wrist"]
    for job, part in zip(jobs, ("shoulder", "wrist"), strict=True):
        assert json.loads((job / "results.json").read_text())["body_parts"] == [part]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        record = json.loads((job / JOB_FILE).read_text())
        assert Path(record["log"]).is_file(), record
        assert record["log"].startswith(str(sweep / ".submitit"))
    assert len({json.loads((job / JOB_FILE).read_text())["job_id"] for job in jobs}) == 2

    summary = run_module("mura_lightning.summarize", str(sweep), "--metric", "val/study/kappa")
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "2 jobs: 2 ok, 0 failed, 0 unfinished" in (sweep / "summary.md").read_text()


def test_a_failed_slurm_job_is_failed_in_summarize_with_its_log(slurm_cluster, mura_root, tmp_path):
    args = slurm_sweep_args(mura_root, tmp_path, "bodypart=shoulder", "data.val_fraction=1.5")
    result = run_module("mura_lightning.train", *args)
    assert result.returncode != 0
    sweep = sweep_folder(tmp_path)
    (job,) = job_folders(sweep)
    record = json.loads((job / JOB_FILE).read_text())
    log_file = record["log"]
    assert Path(log_file).is_file() and Path(log_file).name.startswith(f"{record['job_id']}_")
    assert "data.val_fraction=1.5 must lie strictly between 0 and 1" in result.stderr

    summary = run_module("mura_lightning.summarize", str(sweep))
    assert summary.returncode == 0, summary.stderr[-3000:]
    text = (sweep / "summary.md").read_text()
    assert "1 jobs: 0 ok, 1 failed, 0 unfinished" in text
    assert f"(SLURM log: {log_file})" in text
    assert "data.val_fraction=1.5 must lie strictly between 0 and 1" in text


def test_a_preempted_job_is_requeued_and_resumes_in_the_same_run_folder(slurm_cluster, mura_root, tmp_path):
    args = slurm_sweep_args(
        mura_root,
        tmp_path,
        "bodypart=shoulder",
        f"trainer.max_epochs={PREEMPT_EPOCHS}",
        f"trainer.limit_train_batches={PREEMPT_BATCHES}",
    )
    command = [sys.executable, "-m", "mura_lightning.train", *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job_id = None
    try:
        last = wait_for(
            lambda: next((tmp_path / "outputs" / "multirun").glob("*/0_*/checkpoints/last.ckpt"), None),
            SWEEP_TIMEOUT_S,
            "first checkpoint",
            process,
        )
        job = last.parent.parent
        job_id = json.loads((job / JOB_FILE).read_text())["job_id"]
        signalled = time.monotonic()
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        wait_for(lambda: json.loads((job / JOB_FILE).read_text())["restarts"] > 0, 120, "requeued job", process)
        print(f"preempt to resumed: {time.monotonic() - signalled:.0f} s")
        _, stderr = process.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=False)
    assert process.returncode == 0, stderr[-3000:]
    assert [path.name for path in (tmp_path / "outputs" / "multirun").iterdir()] == [job.parent.name]
    assert job_folders(job.parent) == [job], "the requeued job ran in a new folder"
    log_text = Path(json.loads((job / JOB_FILE).read_text())["log"]).read_text()
    assert f"requeued SLURM job {job_id}" in log_text
    assert f"Restoring states from the checkpoint path at {job / 'hpc_ckpt_1.ckpt'}" in log_text, (
        "the requeued job did not resume from its requeue checkpoint"
    )
    results = json.loads((job / "results.json").read_text())
    assert results["test/study/kappa"] is not None
    checkpoints = sorted(path.name for path in (job / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    assert results["ckpt_path"] == str(job / "checkpoints" / next(c for c in checkpoints if c != "last.ckpt"))
    state = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == PREEMPT_EPOCHS - 1
    assert state["global_step"] == PREEMPT_EPOCHS * PREEMPT_BATCHES
    assert not list(job.glob("hpc_ckpt_*.ckpt")), "the requeue checkpoint was left behind"


def test_two_nodes_of_four_gpus_compose_to_one_task_per_gpu():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import mura_lightning.cluster.slurm  # noqa: F401  (registers the launcher's resolver)

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*overrides, "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.mura_slurm_launcher.launcher.CheckedSlurmLauncher"
    sized = (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, cfg.trainer.num_nodes)
    assert sized == (2, 4, 4, 2)
    assert cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"
    assert (launcher.partition, launcher.additional_parameters.signal) == ("gpu", "USR1@120")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cpu = hydra_compose("train", overrides=["hydra/launcher=slurm", "trainer=cpu"], return_hydra_config=True)
    assert (cpu.hydra.launcher.nodes, cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node) == (
        1,
        1,
        None,
    )


def test_no_slurm_here_is_one_line_saying_how_to_start_the_test_cluster(mura_root, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    result = run_module("mura_lightning.train", *slurm_sweep_args(mura_root, tmp_path, "bodypart=shoulder"), env=env)
    assert result.returncode != 0
    assert "sbatch, which is not installed here" in result.stderr
    assert START_CLUSTER in result.stderr and "hydra/launcher=submitit_local" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_controller_that_does_not_answer_is_one_line(mura_root, tmp_path):
    if cluster_answer() == "SLURM is not installed (no sinfo)":
        pytest.skip("SLURM's commands are not installed; the missing-sbatch test covers this machine")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\nMessageTimeout=2\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    result = run_module("mura_lightning.train", *slurm_sweep_args(mura_root, tmp_path, "bodypart=shoulder"), env=env)
    assert result.returncode != 0
    assert "the SLURM controller does not answer" in result.stderr and START_CLUSTER in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_partition_is_slurms_refusal_in_one_line_and_nothing_runs(slurm_cluster, mura_root, tmp_path):
    args = slurm_sweep_args(mura_root, tmp_path, "bodypart=shoulder,wrist", "hydra.launcher.partition=nosuchpart")
    result = run_module("mura_lightning.train", *args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("SLURM refused the sweep")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Invalid partition name specified" in lines[0] and "nosuchpart" in lines[0]
    assert "Traceback" not in result.stderr
    assert job_folders(sweep_folder(tmp_path)) == []


def test_summarize_points_a_failed_slurm_job_at_its_log(tmp_path):
    job = tmp_path / "sweep" / "0_bodypart=wrist"
    (job / ".hydra").mkdir(parents=True)
    (job / "error.txt").write_text("Traceback (most recent call last):\n  File x\nValueError: out of memory\n")
    log_file = tmp_path / "sweep" / ".submitit" / "7_0" / "7_0_0_log.err"
    (job / JOB_FILE).write_text(json.dumps({"job_id": "7_0", "node": "n1", "restarts": 0, "log": str(log_file)}))
    ok = tmp_path / "sweep" / "1_bodypart=shoulder"
    (ok / ".hydra").mkdir(parents=True)
    (ok / JOB_FILE).write_text(json.dumps({"job_id": "7_1", "log": "/elsewhere.err"}))
    (ok / "results.json").write_text(json.dumps({"model": "resnet50", "body_parts": ["shoulder"]}))
    frame = summarize(tmp_path / "sweep")["summary"]
    errors = dict(zip(frame["job"], frame["error"], strict=True))
    assert errors == {"0_bodypart=wrist": f"ValueError: out of memory (SLURM log: {log_file})", ok.name: ""}


def test_the_requeue_signal_and_checkpoint_names_follow_the_launcher_and_the_run_folder(tmp_path):
    compose("train", ["hydra/launcher=slurm"])  # sets the Hydra config requeue_signal reads, as in a job
    assert requeue_signal().name == "SIGUSR1"
    compose("train", ["hydra/launcher=slurm", "hydra.launcher.additional_parameters.signal=B:USR2@60"])
    assert requeue_signal().name == "SIGUSR2"
    compose("train", ["hydra/launcher=slurm", "hydra.launcher.additional_parameters.signal=USR9@60"])
    with pytest.raises(MuraError, match="signal=USR9@60 names no signal; use e.g. USR1@120"):
        requeue_signal()
    assert hpc_checkpoint_path(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").touch()
    (tmp_path / "hpc_ckpt_3.ckpt").touch()
    assert hpc_checkpoint_path(tmp_path) == tmp_path / "hpc_ckpt_4.ckpt"
