"""CLI: `python -m mura_lightning.synthetic root=DIR studies_per_part=N seed=S [knob=VALUE ...]`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mura_lightning.cli import hydra_app
from mura_lightning.synthetic.write import generate_synthetic_mura


@hydra_app("synthetic")
def main(cfg: DictConfig) -> None:
    """Generate synthetic MURA with conf/synthetic.yaml (the package's defaults) and the command line's overrides."""
    generate_synthetic_mura(**OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
