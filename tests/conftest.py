"""Shared fixtures: small MURA trees written into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from mura_trees import standard_studies, write_tree

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def studies():
    """The standard hand-made studies (two body parts, patients with several studies)."""
    return standard_studies()


@pytest.fixture
def mura_root(tmp_path, studies) -> Path:
    """A small MURA-v1.1 tree with its four official CSVs."""
    return write_tree(tmp_path, studies)


def compose(config_name: str, overrides: list[str]):
    """The project's config `config_name` composed with overrides, as a Hydra app would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    return cfg
