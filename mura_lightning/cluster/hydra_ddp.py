"""Running DDP inside Hydra jobs, multirun included.

Lightning starts ranks > 0 by re-running `sys.argv` with `hydra.run.dir=<HydraConfig run.dir>` appended. Under
a multirun, `sys.argv` holds the whole sweep (`-m`, comma lists) and `run.dir` is not the job's folder, so each
child would start a sweep of its own in a new timestamped folder. `distributed_job` points both at this job.
It also undoes what the DDP launch left in the process (the process group, the rank variables), so the next
job of a multirun launches its own processes instead of hanging on the last job's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

LAUNCH_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _pin_children_to_this_job() -> None:
    """Make the processes Lightning launches re-run exactly this job's overrides, in this job's folder."""
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextmanager
def distributed_job() -> Iterator[None]:
    """Scope one training job: DDP children join this job's folder, and the process is clean afterwards."""
    saved_env = {key: os.environ.get(key) for key in LAUNCH_ENV_KEYS}
    saved_argv = list(sys.argv)
    launched_here = saved_env["LOCAL_RANK"] is None
    if launched_here and HydraConfig.initialized():
        _pin_children_to_this_job()
    try:
        yield
    finally:
        if launched_here:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        sys.argv = saved_argv
