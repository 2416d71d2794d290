"""What guards a training step: an unreadable batch skipped and a non-finite loss raised on every DDP rank alike
(no rank left waiting in a collective), and the batch augmentation drawing per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers.runs import REPO_ROOT

DDP_TIMEOUT_S = 240  # a rank left waiting would block for gloo's 30 minutes: the timeout is the hang


def test_bad_batches_on_one_rank_are_skipped_or_stop_every_rank():
    """Rank 1 lacks batch 1 (skipped on both ranks: the NaN of batch 3 comes at global step 2, not 3) and has a
    NaN in batch 3 (both ranks raise, rank 0 naming the other process); a rank left waiting would hang instead."""
    environment = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}"}
    finished = subprocess.run(
        [sys.executable, "-m", "helpers.ddp_bad_batch"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=DDP_TIMEOUT_S, env=environment,
    )  # fmt: skip
    assert finished.returncode != 0
    assert "training loss is nan at epoch 0, global step 2 (batch 3)" in finished.stderr, finished.stderr[-3000:]
    assert "training loss is not finite on another process at epoch 0, global step 2 (batch 3)" in finished.stderr
    assert "finished" not in finished.stdout


def test_each_rank_draws_its_own_augmentation(mura_root):
    from helpers.runs import build_datamodule

    images = torch.arange(4 * 32 * 32, dtype=torch.float32).reshape(4, 1, 32, 32).remainder(256).to(torch.uint8)
    augmented = {}
    for rank in (0, 1, 0):
        datamodule = build_datamodule(mura_root, "data.gpu_augment=true")
        datamodule.trainer = SimpleNamespace(global_rank=rank)
        augmented.setdefault(rank, []).append(datamodule.device_transform({"image": images}, train=True)["image"])
    torch.testing.assert_close(augmented[0][0], augmented[0][1], msg="a rank repeats its draws")
    assert not torch.equal(augmented[0][0], augmented[1][0]), "two ranks drew the same flips and rotations"


def test_a_weighted_loss_refuses_body_parts_without_counts_before_training():
    import pandas as pd

    from mura_lightning.errors import MuraError
    from mura_lightning.models.losses import WeightedBCELoss

    loss = WeightedBCELoss()
    counts = pd.DataFrame({"images_normal": [3], "images_abnormal": [1]}, index=["shoulder"])
    loss.set_class_counts(counts)
    loss.check_body_parts(["shoulder"])
    with pytest.raises(MuraError, match="no training counts for elbow"):
        loss.check_body_parts(["shoulder", "elbow"])
