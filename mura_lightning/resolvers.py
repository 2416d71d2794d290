"""The OmegaConf resolvers the configs use, registered when the package is imported so every entry point
(train, evaluate, predict, tune, a DDP child, a submitit job) can resolve `conf/hydra/default.yaml`."""

from __future__ import annotations

import os
import re

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

DROPPED_CHARS = re.compile(r"[\[\]{}()'\"+~]")  # list brackets, quotes, the + and ~ of added and deleted keys
UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")  # anything a shell or a Hydra override would need quoted
MAX_DIRNAME_LENGTH = 120
EMPTY_DIRNAME = "defaults"


def launch_dir() -> str:
    """The directory the command was launched from: Hydra's `runtime.cwd` once a job runs, and the working
    directory before (a multirun names its sweep folder before any job's HydraConfig is set)."""
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def job_dirname(overrides: str) -> str:
    """A folder name made from a job's override string: letters, digits, `.`, `_` and `-` only (so a path in
    it needs no quoting in a shell or a Hydra override), at most MAX_DIRNAME_LENGTH characters."""
    name = UNSAFE_RUN.sub("_", DROPPED_CHARS.sub("", overrides)).strip("._-")
    return name[:MAX_DIRNAME_LENGTH].rstrip("._-") or EMPTY_DIRNAME


def register() -> None:
    """Register `${mura.launch_dir:}` and `${mura.dirname:...}` (job_dirname) with OmegaConf."""
    OmegaConf.register_new_resolver("mura.launch_dir", launch_dir, replace=True)
    OmegaConf.register_new_resolver("mura.dirname", job_dirname, replace=True)
