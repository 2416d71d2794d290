"""What differs on a cluster: SLURM requeue on preemption (`slurm`), the checked SLURM launcher behind
`hydra/launcher=slurm` (`slurm_launcher`), DDP ranks joining their Hydra job's folder (`hydra_ddp`) and staging
folders that tell a killed build from a running one on any host of a shared file system (`staging`)."""
