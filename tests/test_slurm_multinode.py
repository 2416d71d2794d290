"""One training run across two SLURM nodes: the test cluster (tests/slurm/start.sh) runs this machine as nodes
<host> and <host>-2, each with its own slurmd, in partition `multinode`; a run there is two CPU processes talking
gloo, one task per node started by srun, as on a real cluster. Launched by slurm/train.sbatch it is preempted,
requeued and resumes; as the job of a `hydra/launcher=slurm` sweep its metrics equal a one-process evaluation of
its checkpoint. In both only rank 0 writes the run's files: every process's writes are recorded
(helpers.write_audit). Tests that need the cluster are skipped when `sinfo` does not answer."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.runs import REPO_ROOT, assert_same_metrics, compose, run_module, tiny_run_overrides
from helpers.slurm import START_CLUSTER, SWEEP_TIMEOUT_S, job_folders, sweep_folder
from helpers.write_audit import Writer, audited_env, writers

from mura_lightning.cluster.slurm_env import secondary_rank_overrides, step_run_name

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

MULTINODE_PARTITION = "multinode"
SBATCH_SCRIPT = REPO_ROOT / "slurm" / "train.sbatch"
PREEMPT_EPOCHS = 3  # the signal, sent once epoch 0 is saved, lands inside the fit even on a loaded machine
PREEMPT_BATCHES = 4  # each rank's whole share of the tree's 36 training images, in batches of 4 (the last dropped)
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
RANK_1_LOG = "train_ddp_process_1.log"


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster) -> list[str]:
    """The nodes of the test cluster's two-node partition (rank 0 runs on the first); skip when it has none."""
    listed = subprocess.run(
        ["sinfo", "--noheader", f"--partition={MULTINODE_PARTITION}", "--format=%N"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", listed], capture_output=True, text=True, timeout=30
    ).stdout.split()
    if not listed or len(nodes) < 2:
        pytest.skip(f"the SLURM cluster has no two-node partition {MULTINODE_PARTITION}: (re)start `{START_CLUSTER}`")
    return nodes


def two_node_overrides(root: Path, out: Path, *overrides: str) -> list[str]:
    """The tiny CPU run as DDP (gloo) with paths.log_dir=out/outputs, so it lands where Hydra puts it."""
    tiny = [o for o in tiny_run_overrides(root, out) if not o.startswith(("paths.output_dir", "trainer="))]
    return [*tiny, f"paths.log_dir={out}/outputs", "trainer=ddp_cpu", "callbacks.cam=null", *overrides]


def job_state(job_id: str) -> dict[str, str]:
    """`scontrol show job`'s fields for the job (SLURM keeps a finished job for MinJobAge, 300 s by default)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)


def wait_on_job(job_id: str, condition, what: str, log: Path, timeout_s: float = SWEEP_TIMEOUT_S) -> dict[str, str]:
    """Poll until `condition(state)` holds for the job's state; fail, with the job's log, when it does not within
    `timeout_s` or the job finished first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if condition(state):
            return state
        if state.get("JobState") in FINISHED:
            break
        time.sleep(0.5)
    logs = "\n".join(path.read_text()[-3000:] for path in log.parent.glob(log.name))
    pytest.fail(f"no {what} for SLURM job {job_id} (state {job_state(job_id).get('JobState')}): {logs}")


def rank_writes(found: list[Writer], rank: int, folder: Path) -> list[Path]:
    """The files under `folder` that processes of `rank` wrote, once per write."""
    return [path for writer in found if writer.rank == rank for path in writer.files if folder in path.parents]


def assert_only_rank_0_writes(found: list[Writer], run: Path, nodes: list[str]) -> None:
    """Rank 0 ran on the first node and rank 1 on the second; rank 1 wrote nothing in the run folder but its own
    log; every other file there is rank 0's, results.json written once."""
    assert {(writer.rank, writer.node) for writer in found if writer.rank is not None} == {
        (0, nodes[0]),
        (1, nodes[1]),
    }
    assert set(rank_writes(found, 1, run)) == {run / RANK_1_LOG}
    on_disk = {path for path in run.rglob("*") if path.is_file()} - {run / RANK_1_LOG}
    assert on_disk <= set(rank_writes(found, 0, run)), on_disk - set(rank_writes(found, 0, run))
    assert rank_writes(found, 0, run).count(run / "results.json") == 1


def test_a_two_node_run_of_the_sbatch_script_is_preempted_requeued_and_resumes(two_nodes, mura_root, tmp_path):
    overrides = two_node_overrides(
        mura_root,
        tmp_path,
        f"trainer.max_epochs={PREEMPT_EPOCHS}",
        f"trainer.limit_train_batches={PREEMPT_BATCHES}",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    )
    records = tmp_path / "writes"
    log = tmp_path / "slurm-*.out"
    size = [f"--partition={MULTINODE_PARTITION}", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]
    command = ["sbatch", "--parsable", *size, "--time=20", f"--output={tmp_path}/slurm-%j.out", str(SBATCH_SCRIPT)]
    submitted = subprocess.run(
        [*command, *overrides],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=audited_env(tmp_path, records),
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    run = tmp_path / "outputs" / "train" / f"slurm-{job_id}.0"
    started = time.monotonic()
    try:
        wait_on_job(job_id, lambda _: (run / "checkpoints" / "last.ckpt").is_file(), "first checkpoint", log)
        signalled = time.monotonic()
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        state = wait_on_job(job_id, lambda state: state.get("JobState") in FINISHED, "end", log)
        print(
            f"2-node job: {signalled - started:.0f} s to its first checkpoint, {time.monotonic() - signalled:.0f} s "
            "from the preemption signal to its end"
        )
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
    log_text = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), log_text[-3000:]
    assert [path.name for path in (tmp_path / "outputs" / "train").iterdir()] == [run.name]
    assert f"requeued SLURM job {job_id}" in log_text
    assert f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}" in log_text
    assert json.loads((run / "results.json").read_text())["test/study/kappa"] is not None
    assert json.loads((run / "slurm.json").read_text())["restarts"] == 1
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (PREEMPT_EPOCHS - 1, PREEMPT_EPOCHS * PREEMPT_BATCHES)
    assert not list(run.glob("hpc_ckpt_*.ckpt")), "the requeue checkpoint was left behind"
    found = writers(records)
    assert {writer.restarts for writer in found if writer.rank is not None} == {0, 1}
    assert_only_rank_0_writes(found, run, two_nodes)


def test_a_two_node_sweep_job_scores_as_one_process_and_only_rank_0_writes(two_nodes, mura_root, tmp_path):
    launcher = [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={MULTINODE_PARTITION}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
    ]
    overrides = two_node_overrides(
        mura_root, tmp_path, "bodypart=shoulder", *launcher, "trainer.devices=1", "trainer.num_nodes=2"
    )
    records = tmp_path / "writes"
    started = time.monotonic()
    try:
        result = run_module("mura_lightning.train", "-m", *overrides, env=audited_env(tmp_path, records))
    finally:  # the sweep's job, should the sweep have been stopped before it ended
        for submitted in tmp_path.glob("outputs/multirun/*/.submitit/*/"):
            subprocess.run(["scancel", submitted.name], capture_output=True, check=False)
    print(f"2-node sweep job: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    (job,) = job_folders(sweep)
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --nodes=2\n" in script.read_text() and "#SBATCH --ntasks-per-node=1\n" in script.read_text()
    assert_only_rank_0_writes(writers(records), job, two_nodes)

    from mura_lightning.train import train

    results = json.loads((job / "results.json").read_text())
    one_process = [*tiny_run_overrides(mura_root, tmp_path), "bodypart=shoulder", "callbacks.cam=null", "train=false"]
    assert_same_metrics(results, train(compose("train", [*one_process, f"ckpt_path={results['ckpt_path']}"])))


def test_every_task_of_an_srun_step_names_the_same_run_folder_and_only_rank_0_keeps_hydras_files(monkeypatch):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    for key, value in {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NAME": "mura-train",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert step_run_name("2026-01-01_00-00-00") == "slurm-7.0"
    assert secondary_rank_overrides("train") == ["hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["paths.log_dir=/runs"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "/runs/train/slurm-7.0"
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert secondary_rank_overrides("train") == []
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert step_run_name("2026-01-01_00-00-00") == "slurm-5_3.0"
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive shell on an allocation: runs keep their own
    assert step_run_name("2026-01-01_00-00-00") == "2026-01-01_00-00-00"
    monkeypatch.delenv("SLURM_STEP_ID")  # the batch script itself, not an srun task
    monkeypatch.setenv("SLURM_JOB_NAME", "mura-train")
    assert step_run_name("2026-01-01_00-00-00") == "2026-01-01_00-00-00"
    assert secondary_rank_overrides("train") == []
