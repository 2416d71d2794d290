"""What SLURM's queue says about a sweep's jobs while `hydra/launcher=slurm` waits for them: submitit's job watcher
reading `squeue` (which answers with or without accounting; submitit's own watcher reads `sacct`, which fails where
accounting is off), the pending reasons that mean a job can never start, the job's request and the partition's
largest node (`sinfo`), and which setting makes the request fit."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from submitit.slurm.slurm import SlurmInfoWatcher

log = logging.getLogger(__name__)

# Pending reasons that mean the job can never start as asked: its request exceeds what the partition, a node, its
# QOS or its association allows for one job, or names an account or QOS that does not exist. Waiting cannot help,
# only a smaller request (or another partition) can. Reasons that pass with time or with other jobs are left out:
# Resources, Priority, BeginTime (a requeued job), Dependency, JobArrayTaskLimit, the QOS/association limits per
# user or in aggregate (QOSGrp*, AssocGrp*, *PerUser*), and ReqNodeNotAvail and PartitionNodeLimit, which SLURM
# also gives while nodes are down, drained or reserved for maintenance. Names from SLURM's job reason codes
# (https://slurm.schedmd.com/job_reason_codes.html); the test cluster gives PartitionConfig for more CPUs than
# its node has.
NEVER_STARTS = frozenset(
    {
        "PartitionConfig",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSNotAllowed",
        "AccountNotAllowed",
        "MaxMemPerLimit",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxCpuPerNode",
        "QOSMaxGRESPerJob",
        "QOSMaxGRESPerNode",
        "QOSMaxMemoryPerJob",
        "QOSMaxMemoryPerNode",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxCpuPerJobLimit",
        "AssocMaxCpuPerNode",
        "AssocMaxGRESPerJob",
        "AssocMaxGRESPerNode",
        "AssocMaxMemPerJob",
        "AssocMaxMemPerNode",
        "AssocMaxNodePerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
    }
)
PENDING = "PENDING"
LEFT_QUEUE = "LEFT_QUEUE"  # the state of a job squeue no longer lists (gone MinJobAge after it ended, or cancelled
# while pending as a task of an array, which SLURM drops without a CANCELLED record)
# The states of a job that has ended for good (as squeue writes them). submitit counts every state not in its short
# list of live ones as ended, so a job still CONFIGURING (nodes booting), SUSPENDED, STOPPED or SIGNALING would be
# taken for lost; PREEMPTED is left out too, as the job may be requeued (if not, it leaves the queue after MinJobAge).
ENDED_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", LEFT_QUEUE}
)
QUEUE_COLUMNS = {"JobID": "%i", "State": "%T", "Reason": "%r"}  # submitit's names -> squeue's --format fields
NO_SUCH_JOBS = "Invalid job id specified"  # squeue's answer when none of the asked jobs is known any more
SLURM_ANSWER_TIMEOUT_S = 30
SINFO_NODE_FORMAT = "%P|%c|%m|%G|%l"  # per node: partition (`*`: the default), CPUs, memory (MB), GRES, time limit
GPU_GRES = re.compile(r"gpu(?::[^:,(]+)?:(\d+)")  # gpu:4, gpu:a100:4, gpu:a100:4(S:0-1)
MB_PER_GB = 1024


def ask_slurm(command: list[str]) -> subprocess.CompletedProcess:
    """Run a SLURM command (squeue, sinfo) for its text answer; a command that cannot run or does not answer within
    SLURM_ANSWER_TIMEOUT_S comes back as a failed answer with the reason in its stderr."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=SLURM_ANSWER_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as err:
        return subprocess.CompletedProcess(command, 1, "", str(err))


@dataclass
class CheckedSlurmQueueConf(SlurmQueueConf):
    """The schema of `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): submitit's SLURM settings, and the
    longest wait between two looks at the queue. Here, not in hydra_plugins/, because Hydra loads those modules
    outside sys.modules while it looks for plugins, where a dataclass cannot be made."""

    _target_: str = "hydra_plugins.mura_slurm_launcher.launcher.CheckedSlurmLauncher"
    poll_s: int = 30


class QueueWatcher(SlurmInfoWatcher):
    """submitit's SLURM job watcher reading `squeue --states=all` instead of `sacct`: it answers where accounting
    is off, and keeps a finished job's state for MinJobAge (300 s by default) after it ended. A job squeue no
    longer lists has state LEFT_QUEUE; a job is done once it has ended for good (ENDED_STATES). It also knows
    each job's pending reason.

    Args:
        delay_s: the longest time between two looks at the queue (submitit asks at 2, 4, 8... s after the last
            submission, then every `delay_s`).

    Example:
        `watcher = QueueWatcher(delay_s=30); watcher.register_job("14_0"); watcher.update();
        watcher.get_state("14_0")` -> `"RUNNING"`.
    """

    @property
    def delay_s(self) -> float:
        """The longest time between two looks at the queue."""
        return self._delay_s

    def _make_command(self) -> list[str] | None:
        arrays = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
        if not arrays:
            return None
        columns = "|".join(QUEUE_COLUMNS.values())
        return ["squeue", "--states=all", "--array", "--noheader", f"--jobs={','.join(arrays)}", f"--format={columns}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        """The jobs in squeue's answer (one `job|state|reason` line each, array tasks one per line), by job id."""
        text = string.decode() if isinstance(string, bytes) else string
        return super().read_info("|".join(QUEUE_COLUMNS) + "\n" + text)

    def update(self) -> None:
        """Ask squeue about the jobs not known to have ended; those it does not list have left the queue. When
        squeue does not answer, the states stay as they were until the next look."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        answer = ask_slurm(command)
        if answer.returncode == 0 or NO_SUCH_JOBS in answer.stderr:
            listed = self.read_info(answer.stdout if answer.returncode == 0 else "")
            for job_id in self._registered - self._finished - set(listed):
                listed[job_id] = {"JobID": job_id, "State": LEFT_QUEUE, "LastState": self.get_state(job_id, "cache")}
            self._info_dict.update(listed)
        else:
            log.warning("squeue did not answer (%s); asking again later", " ".join(answer.stderr.split()))
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Whether the job has ended for good (ENDED_STATES), as of the last look at the queue (mode: submitit's
        "standard" looks again when it is time, "force" now, "cache" not)."""
        return self.get_state(job_id, mode=mode) in ENDED_STATES

    def never_starts(self, job_id: str) -> str | None:
        """SLURM's reason when the job is pending for a reason that means it can never start (NEVER_STARTS), as
        of the last look at the queue; else None."""
        info = self.get_info(job_id, mode="cache")
        reason = info.get("Reason", "").split(",")[0].strip()
        return reason if info.get("State") == PENDING and reason in NEVER_STARTS else None

    def ending(self, job_id: str) -> str:
        """How the job ended as SLURM last said: its final state (CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY...), or
        that it left the queue and what it was before."""
        info = self.get_info(job_id, mode="cache")
        if info.get("State") != LEFT_QUEUE:
            return info.get("State") or "UNKNOWN"
        last = info.get("LastState", "UNKNOWN")
        return "left the queue before it started" if last == PENDING else f"left the queue, last seen {last}"


@dataclass(frozen=True)
class JobRequest:
    """What each job of the sweep asks SLURM for (the launcher's settings; None: SLURM's default)."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None

    @classmethod
    def from_launcher(cls, params: dict[str, Any]) -> JobRequest:
        """The request in the launcher's settings (`hydra.launcher.*`)."""
        return cls(**{name: params[name] for name in cls.__dataclass_fields__ if params.get(name) is not None})

    def describe(self) -> str:
        """E.g. `1 node x 1 task x 8 CPUs per task, no GPUs, the partition's default memory, 1440 min`."""
        gpus = f"{self.gpus_per_node} GPUs per node" if self.gpus_per_node else "no GPUs"
        memory = f"{self.mem_gb:g} GB per node" if self.mem_gb else "the partition's default memory"
        time_limit = f", {self.timeout_min} min" if self.timeout_min else ""
        return (
            f"{self.nodes} node x {self.tasks_per_node} task x {self.cpus_per_task or 1} CPUs per task, {gpus}, "
            f"{memory}{time_limit}"
        )


@dataclass(frozen=True)
class PartitionSize:
    """A partition's node count and the most CPUs, memory and GPUs any of its nodes has, from sinfo."""

    name: str
    nodes: int
    cpus: int
    memory_mb: int
    gpus: int
    time_limit: str

    def describe(self) -> str:
        """E.g. `partition debug: 1 node, the largest with 2 CPUs, 21694 MB memory, no GPUs; time limit infinite`."""
        gpus = f"{self.gpus} GPUs" if self.gpus else "no GPUs"
        return (
            f"partition {self.name}: {self.nodes} node(s), the largest with {self.cpus} CPUs, {self.memory_mb} MB "
            f"memory, {gpus}; time limit {self.time_limit}"
        )


def parse_partition_size(sinfo_lines: str, partition: str | None) -> PartitionSize | None:
    """The size of `partition` (None: the default one, marked `*`) from `sinfo --Node --format=SINFO_NODE_FORMAT`
    lines; None when no line names it."""
    rows = [line.split("|") for line in sinfo_lines.splitlines() if line.count("|") == SINFO_NODE_FORMAT.count("|")]
    wanted = [row for row in rows if (row[0] == partition if partition else row[0].endswith("*"))]
    if not wanted:
        return None
    return PartitionSize(
        name=wanted[0][0].rstrip("*"),
        nodes=len(wanted),
        cpus=max(int(row[1].rstrip("+")) for row in wanted),
        memory_mb=max(int(row[2].rstrip("+")) for row in wanted),
        gpus=max(sum(int(count) for count in GPU_GRES.findall(row[3])) for row in wanted),
        time_limit=wanted[0][4],
    )


def partition_size(partition: str | None) -> PartitionSize | None:
    """The size of `partition` (None: the default one) as sinfo reports it; None when sinfo does not say."""
    command = ["sinfo", "--noheader", "--Node", f"--format={SINFO_NODE_FORMAT}"]
    answer = ask_slurm([*command, *([f"--partition={partition}"] if partition else [])])
    return parse_partition_size(answer.stdout, partition) if answer.returncode == 0 else None


def settings_to_fit(request: JobRequest, size: PartitionSize) -> list[str]:
    """The settings that bring `request` within `size`'s largest node (and node count); empty when it fits."""
    settings = []
    cpus = request.tasks_per_node * (request.cpus_per_task or 1)
    if cpus > size.cpus:
        per_task = size.cpus // request.tasks_per_node
        settings.append(f"hydra.launcher.cpus_per_task={per_task}" if per_task else f"trainer.devices={size.cpus}")
    if (request.gpus_per_node or 0) > size.gpus:
        settings.append(f"trainer.devices={size.gpus}" if size.gpus else "trainer=cpu")
    if request.mem_gb and request.mem_gb * MB_PER_GB > size.memory_mb:
        settings.append(f"hydra.launcher.mem_gb={size.memory_mb // MB_PER_GB}")
    if request.nodes > size.nodes:
        settings.append(f"trainer.num_nodes={size.nodes}")
    return settings
