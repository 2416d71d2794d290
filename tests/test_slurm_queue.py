"""What the SLURM launcher reads from the queue while it waits (mura_lightning/cluster/slurm_queue.py): a sweep
whose jobs can never start stops at once saying what to change; a job cancelled out of the queue is reported
failed while the other finishes, and summarize lists it. squeue's and sinfo's answers are parsed from fakes; the
sweeps run on the one-node test cluster (tests/slurm/start.sh) and are skipped when `sinfo` does not answer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import REPO_ROOT
from helpers.slurm import SWEEP_TIMEOUT_S, job_folders, slurm_sweep_args, sweep_folder

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from submitit.core.utils import JobPaths  # noqa: E402  (after the skip: the plugin brings submitit)

from mura_lightning.cluster import slurm_launcher, slurm_queue  # noqa: E402
from mura_lightning.cluster.slurm_launcher import SlurmUnavailableError, wait_for_jobs  # noqa: E402
from mura_lightning.cluster.slurm_queue import (  # noqa: E402
    JobRequest,
    PartitionSize,
    QueueWatcher,
    parse_partition_size,
    settings_to_fit,
)
from mura_lightning.io import ERROR_FILE, RESULTS_FILE  # noqa: E402
from mura_lightning.summarize import summarize  # noqa: E402

FAST_POLL = "hydra.launcher.poll_s=2"
LOST_WITHIN_S = 30  # scancel to the lost job's error.txt: a 2 s poll and a 2 s grace, on a loaded machine
STOPPED_WITHIN_S = 30  # submission to the end of a sweep that can never start: the first looks at the queue
LEAVES_QUEUE_WITHIN_S = 30  # a job whose result is in still shows RUNNING while its process exits and SLURM cleans up


class FakeSlurm:
    """Stands in for subprocess.run in slurm_queue: answers squeue from a script of (returncode, stdout, stderr),
    the last one repeated, and sinfo with fixed lines; records the commands."""

    def __init__(self, squeue_answers, sinfo_lines="debug*|2|21694|(null)|infinite\n"):
        self.squeue_answers = list(squeue_answers)
        self.sinfo_lines = sinfo_lines
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if command[0] == "sinfo":
            return subprocess.CompletedProcess(command, 0, self.sinfo_lines, "")
        code, out, err = self.squeue_answers.pop(0) if len(self.squeue_answers) > 1 else self.squeue_answers[0]
        return subprocess.CompletedProcess(command, code, out, err)


class FakeJob:
    """A submitted job as the wait sees it: its id, its result file (submitit's paths) and a cancel."""

    def __init__(self, folder: Path, job_id: str):
        self.job_id = job_id
        self.paths = JobPaths(folder / job_id, job_id=job_id, task_id=0)
        self.num_tasks = 1
        self.cancelled = False

    def task(self, index: int) -> FakeJob:
        return self

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True

    def write_result(self) -> None:
        self.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
        self.paths.result_pickle.write_bytes(b"result")


def watched(monkeypatch, answers, delay_s=60.0, **sinfo) -> tuple[QueueWatcher, FakeSlurm]:
    fake = FakeSlurm(answers, **sinfo)
    monkeypatch.setattr(slurm_queue.subprocess, "run", fake)
    return QueueWatcher(delay_s=delay_s), fake


def test_the_watcher_reads_squeue_and_a_job_it_no_longer_lists_has_left_the_queue(monkeypatch):
    watcher, fake = watched(
        monkeypatch, [(0, "14_0|RUNNING|None\n14_1|PENDING|JobArrayTaskLimit\n", ""), (0, "14_0|COMPLETED|None\n", "")]
    )
    for job_id in ("14_0", "14_1"):
        watcher.register_job(job_id)
    watcher.update()
    assert fake.commands[0][:2] == ["squeue", "--states=all"] and "--jobs=14" in fake.commands[0]
    assert [watcher.get_state(job_id, "cache") for job_id in ("14_0", "14_1")] == ["RUNNING", "PENDING"]
    assert not watcher.is_done("14_1", "cache") and watcher.never_starts("14_1") is None
    watcher.update()
    assert watcher.get_state("14_0", "cache") == "COMPLETED" and watcher.ending("14_0") == "COMPLETED"
    assert watcher.get_state("14_1", "cache") == slurm_queue.LEFT_QUEUE
    assert watcher.ending("14_1") == "left the queue before it started"
    assert watcher.is_done("14_1", "cache") and watcher._make_command() is None  # nothing left to ask about


@pytest.mark.parametrize(
    ("state", "ended"),
    [
        ("OUT_OF_MEMORY", True),
        ("TIMEOUT", True),
        ("NODE_FAIL", True),
        ("COMPLETING", False),  # also a job being requeued
        ("CONFIGURING", False),  # nodes still booting
        ("SUSPENDED", False),
        ("PREEMPTED", False),  # it may be requeued
        ("REQUEUED", False),
    ],
)
def test_a_job_is_done_only_in_a_state_it_cannot_leave(monkeypatch, state, ended):
    watcher, _ = watched(monkeypatch, [(0, f"19_0|{state}|None\n", "")])
    watcher.register_job("19_0")
    watcher.update()
    assert watcher.is_done("19_0", "cache") == ended
    assert watcher.ending("19_0") == state


def test_squeue_knowing_none_of_the_jobs_means_they_all_left_and_no_answer_keeps_the_states(monkeypatch, caplog):
    watcher, _ = watched(
        monkeypatch,
        [
            (0, "15_0|RUNNING|None\n", ""),
            (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"),
            (1, "", "slurm_load_jobs error: Invalid job id specified\n"),
        ],
    )
    watcher.register_job("15_0")
    watcher.update()
    watcher.update()
    assert watcher.get_state("15_0", "cache") == "RUNNING" and "Unable to contact slurm controller" in caplog.text
    watcher.update()
    assert watcher.is_done("15_0", "cache") and watcher.ending("15_0") == "left the queue, last seen RUNNING"


@pytest.mark.parametrize(
    ("state", "reason", "never_starts"),
    [
        ("PENDING", "PartitionConfig", True),  # what the test cluster says for more CPUs than its node has
        ("PENDING", "BadConstraints", True),
        ("PENDING", "PartitionTimeLimit", True),
        ("PENDING", "QOSMaxCpuPerJobLimit", True),
        ("PENDING", "Resources", False),
        ("PENDING", "Priority", False),
        ("PENDING", "JobArrayTaskLimit", False),
        ("PENDING", "BeginTime", False),  # a requeued job waiting to start again
        ("PENDING", "ReqNodeNotAvail, UnavailableNodes:node7", False),  # nodes down or reserved: they come back
        ("PENDING", "PartitionNodeLimit", False),
        ("PENDING", "QOSMaxJobsPerUserLimit", False),
        ("RUNNING", "PartitionConfig", False),
    ],
)
def test_only_reasons_that_never_pass_stop_a_pending_job(monkeypatch, state, reason, never_starts):
    watcher, _ = watched(monkeypatch, [(0, f"16_0|{state}|{reason}\n", "")])
    watcher.register_job("16_0")
    watcher.update()
    assert watcher.never_starts("16_0") == (reason if never_starts else None)


def test_sinfo_lines_give_a_partitions_largest_node():
    lines = (
        "debug*|2|21694|(null)|infinite\n"
        "gpu|64|512000|gpu:a100:4(S:0-1)|2-00:00:00\n"
        "gpu|32|256000|gpu:2,mps:100|2-00:00:00\n"
    )
    assert parse_partition_size(lines, None) == PartitionSize("debug", 1, 2, 21694, 0, "infinite")
    assert parse_partition_size(lines, "gpu") == PartitionSize("gpu", 2, 64, 512000, 4, "2-00:00:00")
    assert parse_partition_size(lines, "nosuch") is None
    assert parse_partition_size("", None) is None


@pytest.mark.parametrize(
    ("request_", "settings"),
    [
        (JobRequest(cpus_per_task=8), ["hydra.launcher.cpus_per_task=2"]),
        (JobRequest(tasks_per_node=4, cpus_per_task=1), ["trainer.devices=2"]),
        (JobRequest(gpus_per_node=1, cpus_per_task=1), ["trainer=cpu"]),
        (JobRequest(mem_gb=64), ["hydra.launcher.mem_gb=21"]),
        (JobRequest(nodes=2), ["trainer.num_nodes=1"]),
        (JobRequest(cpus_per_task=2, mem_gb=8), []),
    ],
)
def test_the_settings_that_make_a_request_fit_the_largest_node(request_, settings):
    assert settings_to_fit(request_, PartitionSize("debug", 1, 2, 21694, 0, "infinite")) == settings


def test_gpu_requests_fit_a_gpu_partition():
    size = PartitionSize("gpu", 2, 64, 512000, 4, "2-00:00:00")
    asked = JobRequest(nodes=4, tasks_per_node=8, cpus_per_task=16, gpus_per_node=8)
    assert settings_to_fit(asked, size) == [
        "hydra.launcher.cpus_per_task=8",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    ]


def test_the_wait_reports_a_job_without_a_result_one_poll_after_it_ended_and_waits_for_a_late_result(
    monkeypatch, tmp_path
):
    finished, cancelled = FakeJob(tmp_path, "17_0"), FakeJob(tmp_path, "17_1")
    answers = [(0, "17_0|RUNNING|None\n17_1|PENDING|Resources\n", ""), (0, "17_0|COMPLETED|None\n", "")]
    watcher, fake = watched(monkeypatch, answers, delay_s=0.5)
    monkeypatch.setattr(slurm_launcher, "RESULT_CHECK_S", 0.01)
    calls = []

    def squeue_then_a_late_result(command, **kwargs):
        calls.append(time.monotonic())
        if len(calls) == 2:  # squeue says 17_0 completed; its result file lands a little later (a slow file system)
            threading.Timer(0.1, finished.write_result).start()
        return fake(command, **kwargs)

    monkeypatch.setattr(slurm_queue.subprocess, "run", squeue_then_a_late_result)
    lost = []
    wait_for_jobs(
        [finished, cancelled], watcher, JobRequest(), None, lambda *found: lost.append((*found, time.monotonic()))
    )
    assert [(index, ending) for index, ending, _ in lost] == [(1, "left the queue before it started")]
    assert lost[0][2] - calls[1] >= 0.5, "reported before a poll's grace"
    assert not finished.cancelled and not cancelled.cancelled


def test_the_wait_cancels_a_sweep_that_can_never_start_saying_what_to_change(monkeypatch, tmp_path):
    jobs = [FakeJob(tmp_path, "18_0"), FakeJob(tmp_path, "18_1")]
    watched(monkeypatch, [(0, "18_0|PENDING|PartitionConfig\n18_1|PENDING|PartitionConfig\n", "")])
    watcher = QueueWatcher(delay_s=60)
    with pytest.raises(SlurmUnavailableError) as raised:
        wait_for_jobs(jobs, watcher, JobRequest(cpus_per_task=8, timeout_min=20), None, lambda *_: None)
    message = str(raised.value)
    assert message.startswith("SLURM job 18_0 can never start (pending, reason PartitionConfig)")
    assert "each job asks for 1 node x 1 task x 8 CPUs per task" in message
    assert "partition debug: 1 node(s), the largest with 2 CPUs, 21694 MB memory" in message
    assert message.endswith("Cancelled the sweep's 2 queued job(s) (18_0, 18_1); set hydra.launcher.cpus_per_task=2")
    assert all(job.cancelled for job in jobs)


def node_cpus() -> int:
    """The most CPUs a node of the test cluster has."""
    answer = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%c"], capture_output=True, text=True)
    return max(int(line) for line in answer.stdout.split())


def queued(job_ids: list[str]) -> str:
    """squeue's lines for those of the jobs still pending or running."""
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))
    answer = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=PENDING,RUNNING", f"--jobs={arrays}", "--format=%i %T"],
        capture_output=True,
        text=True,
    )
    return answer.stdout.strip()


def queued_after_draining(job_ids: list[str]) -> str:
    """queued(job_ids) once it is empty, or as it stands after LEAVES_QUEUE_WITHIN_S: a job whose result the sweep
    has read may still be RUNNING for a moment while its process exits."""
    deadline = time.monotonic() + LEAVES_QUEUE_WITHIN_S
    while (lines := queued(job_ids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return lines


class Sweep:
    """`python -m mura_lightning.train ARGS` running in the background; its stderr and when it ended (wall clock)
    are collected by a thread."""

    def __init__(self, args: list[str], out: Path):
        self.out = out
        command = [sys.executable, "-m", "mura_lightning.train", *args]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.stderr = ""
        self.ended_at: float | None = None
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        self.stderr = self.process.communicate()[1]
        self.ended_at = time.time()

    def tasks(self) -> list[str]:
        """The SLURM job ids of its tasks, from submitit's folders (<sweep>/.submitit/<array>_<task>/)."""
        return sorted(
            path.name for path in (self.out / "outputs" / "multirun").glob("*/.submitit/*_*") if path.is_dir()
        )

    def submitted_at(self) -> float:
        """When its jobs were submitted (wall clock): submitit makes their folders then."""
        return (
            min((self.out / "outputs" / "multirun").glob("*/.submitit/*_*"), key=lambda p: p.stat().st_mtime)
            .stat()
            .st_mtime
        )

    def wait_for(self, condition, timeout_s: float, what: str):
        """condition()'s first true value, polled while the sweep runs; fails the test when the sweep ends first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            if self.ended_at is not None:
                pytest.fail(f"the sweep ended before {what}: {self.stderr[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"no {what} within {timeout_s} s")

    def finish(self) -> int:
        """Its exit code, once it has ended (at most SWEEP_TIMEOUT_S)."""
        self._reader.join(SWEEP_TIMEOUT_S)
        assert self.ended_at is not None, f"the sweep did not end within {SWEEP_TIMEOUT_S} s"
        return self.process.returncode

    def stop(self) -> None:
        """Kill it and cancel its jobs when it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            subprocess.run(["scancel", *self.tasks()], check=False)


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, tmp_path_factory):
    """This file's two sweeps on the test cluster, started together so that their start-up (imports, composing the
    jobs) overlaps: `unstartable` asks for one CPU more than the node has; `one_at_a_time` runs two jobs one after
    the other (job 1 waits in the queue, to be cancelled)."""
    root = write_tree(tmp_path_factory.mktemp("mura"), standard_studies())
    cpus = node_cpus()
    unstartable_out = tmp_path_factory.mktemp("unstartable")
    unstartable_args = [
        arg.replace("hydra.launcher.cpus_per_task=1", f"hydra.launcher.cpus_per_task={cpus + 1}")
        for arg in slurm_sweep_args(root, unstartable_out, "bodypart=shoulder,wrist")
    ]
    one_at_a_time_out = tmp_path_factory.mktemp("one_at_a_time")
    one_at_a_time_args = slurm_sweep_args(
        root, one_at_a_time_out, "bodypart=shoulder,wrist", FAST_POLL, "hydra.launcher.array_parallelism=1"
    )
    started = {
        "unstartable": Sweep(unstartable_args, unstartable_out),
        "one_at_a_time": Sweep(one_at_a_time_args, one_at_a_time_out),
    }
    yield started, cpus
    for sweep in started.values():
        sweep.stop()


def test_a_sweep_asking_more_cpus_than_the_node_has_stops_at_once_saying_what_to_change(sweeps):
    started, cpus = sweeps
    sweep = started["unstartable"]
    returncode = sweep.finish()
    stopped_after = sweep.ended_at - sweep.submitted_at()
    print(f"submission to stop: {stopped_after:.1f} s")
    job_ids = sweep.tasks()
    assert returncode != 0 and len(job_ids) == 2
    lines = [line for line in sweep.stderr.splitlines() if "can never start" in line]
    assert len(lines) == 1, sweep.stderr[-3000:]
    assert lines[0].startswith(f"SLURM job {job_ids[0]} can never start (pending, reason PartitionConfig)")
    assert f"each job asks for 1 node x 1 task x {cpus + 1} CPUs per task, no GPUs" in lines[0]
    assert f"the largest with {cpus} CPUs" in lines[0]
    assert lines[0].endswith(f"({', '.join(job_ids)}); set hydra.launcher.cpus_per_task={cpus}")
    assert "Traceback" not in sweep.stderr
    assert stopped_after < STOPPED_WITHIN_S
    assert queued_after_draining(job_ids) == ""
    assert job_folders(sweep_folder(sweep.out)) == []


def test_a_cancelled_job_is_reported_failed_while_the_other_finishes_and_summarize_lists_it(sweeps):
    started, _ = sweeps
    sweep = started["one_at_a_time"]
    sweep.wait_for(lambda: len(sweep.tasks()) == 2, SWEEP_TIMEOUT_S, "submitted jobs")
    lost_id = sweep.tasks()[-1]
    subprocess.run(["scancel", lost_id], check=True)  # pending: array_parallelism=1 runs job 0 first
    cancelled = time.monotonic()
    lost_error = sweep.wait_for(
        lambda: next((sweep.out / "outputs" / "multirun").glob(f"*/1_*/{ERROR_FILE}"), None),
        LOST_WITHIN_S,
        "error.txt of the cancelled job",
    )
    print(f"scancel to the job reported failed: {time.monotonic() - cancelled:.1f} s")
    assert sweep.finish() == 1
    lines = [line for line in sweep.stderr.splitlines() if "SLURM job(s) ended without a result" in line]
    assert len(lines) == 1, sweep.stderr[-3000:]
    assert re.match(rf"1 SLURM job\(s\) ended without a result \({lost_id}: (CANCELLED|left the queue)", lines[0])
    assert "the other 1 job(s) ran to their end" in lines[0] and "Traceback" not in sweep.stderr
    assert queued_after_draining(sweep.tasks()) == ""

    sweep_dir = sweep_folder(sweep.out)
    finished, lost = job_folders(sweep_dir)
    assert lost == lost_error.parent and lost.name.startswith("1_bodypart-wrist")
    assert json.loads((finished / RESULTS_FILE).read_text())["body_parts"] == ["shoulder"]
    assert (finished / "checkpoints" / "last.ckpt").is_file()
    assert lost_error.read_text().startswith(f"SLURM job {lost_id} ended without a result")
    frame = summarize(sweep_dir)["summary"]
    assert list(frame["status"]) == ["ok", "failed"]
    assert frame["error"][1].startswith(f"SLURM job {lost_id} ended without a result")
