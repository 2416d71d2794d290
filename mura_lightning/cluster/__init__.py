"""What differs on a cluster: SLURM requeue on preemption (`slurm`), the checked SLURM launcher behind
`hydra/launcher=slurm` (`slurm_launcher`) and what it reads from the queue while it waits (`slurm_queue`), DDP
ranks joining their Hydra job's folder (`hydra_ddp`) and staging folders that tell a killed build from a running
one on any host of a shared file system (`staging`)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "slurm": ["SlurmRequeue", "in_slurm_job", "record_job"],
        "slurm_launcher": ["SlurmJobLostError", "SlurmUnavailableError", "checked_launch"],
        "hydra_ddp": ["distributed_job"],
        "staging": ["staging_folder"],
    },
)
