"""What differs on a cluster: SLURM requeue on preemption (`slurm`), the checked SLURM launcher behind
`hydra/launcher=slurm` (`slurm_launcher`) and what it reads from the queue while it waits (`slurm_queue`), DDP
ranks joining their Hydra job's folder (`hydra_ddp`), the tasks `srun` starts for one run agreeing on its folder
and leaving its files to rank 0 (`slurm_env`) and staging folders that tell a killed build from a running one on
any host of a shared file system (`staging`)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "slurm": ["SlurmRequeue", "in_slurm_job", "record_job"],
        "slurm_launcher": ["SlurmJobLostError", "SlurmUnavailableError", "checked_launch"],
        "hydra_ddp": ["distributed_job"],
        "slurm_env": ["secondary_rank_overrides", "step_run_name"],
        "staging": ["staging_folder"],
    },
)
