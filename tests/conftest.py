"""Shared fixtures: small MURA trees written into a temporary folder (helpers/ has what the tests call)."""

from __future__ import annotations

import os

# One torch thread per test process (read when torch is imported, so before any test module imports it; the
# runs tests start inherit it): the suite runs in one worker per core (pytest-xdist, pyproject's addopts), and two
# threads per process on a 32 px batch only spin against the other worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest
from helpers.mura_trees import standard_studies, write_tree
from helpers.slurm import START_CLUSTER, cluster_answer


@pytest.fixture
def studies():
    """The standard hand-made studies (two body parts, patients with several studies)."""
    return standard_studies()


@pytest.fixture
def mura_root(tmp_path, studies) -> Path:
    """A small MURA-v1.1 tree with its four official CSVs."""
    return write_tree(tmp_path, studies)


@pytest.fixture(scope="module")
def slurm_cluster():
    """Skip unless a SLURM cluster answers (the test cluster: tests/slurm/start.sh)."""
    reason = cluster_answer()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}; start the test cluster with `{START_CLUSTER}`")
