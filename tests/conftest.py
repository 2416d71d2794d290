"""Shared fixtures: small MURA trees written into a temporary folder (helpers/ has what the tests call)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.mura_trees import standard_studies, write_tree


@pytest.fixture
def studies():
    """The standard hand-made studies (two body parts, patients with several studies)."""
    return standard_studies()


@pytest.fixture
def mura_root(tmp_path, studies) -> Path:
    """A small MURA-v1.1 tree with its four official CSVs."""
    return write_tree(tmp_path, studies)
