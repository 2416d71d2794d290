"""The OmegaConf resolvers the configs use, registered when the package is imported so every entry point
(train, evaluate, predict, tune, a DDP child, a submitit job) can resolve `conf/hydra/default.yaml`."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mura_lightning.cluster.slurm_env import step_run_name
from mura_lightning.dirnames import dirname, sorted_overrides


def launch_dir() -> str:
    """The directory the command was launched from: Hydra's `runtime.cwd` once a job runs, and the working
    directory before (a multirun names its sweep folder before any job's HydraConfig is set)."""
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def job_overrides() -> list[str]:
    """The running job's command-line overrides that name it: all but
    `hydra.job.config.override_dirname.exclude_keys`, sorted by key."""
    hydra_cfg = HydraConfig.get()
    exclude_keys = set(hydra_cfg.job.config.override_dirname.exclude_keys)
    return sorted_overrides(list(hydra_cfg.overrides.task), exclude_keys)


def job_dirname() -> str:
    """The running job's folder name (mura_lightning.dirnames) from its overrides that name it."""
    return dirname(job_overrides())


def register() -> None:
    """Register `${mura.launch_dir:}`, `${mura.job_dirname:}` and `${mura.run_name:DEFAULT}` with OmegaConf."""
    OmegaConf.register_new_resolver("mura.launch_dir", launch_dir, replace=True)
    OmegaConf.register_new_resolver("mura.job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("mura.run_name", step_run_name, replace=True)
