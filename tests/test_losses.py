"""Losses: MURA's weighted BCE against hand-computed weights and values, focal and plain BCE."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.models.losses import BCELoss, FocalLoss, WeightedBCELoss

COUNTS = pd.DataFrame(
    {"images_normal": [30, 10], "images_abnormal": [10, 30], "studies_normal": [9, 4], "studies_abnormal": [4, 9]},
    index=pd.Index(["hand", "wrist"], name="body_part"),
)


def test_weights_follow_the_mura_formula():
    loss = WeightedBCELoss()
    loss.set_class_counts(COUNTS)
    hand, wrist = BODY_PARTS.index("hand"), BODY_PARTS.index("wrist")
    # w0 = A / (A + N) on normal images, w1 = N / (A + N) on abnormal ones
    torch.testing.assert_close(loss.weights[hand], torch.tensor([10 / 40, 30 / 40]))
    torch.testing.assert_close(loss.weights[wrist], torch.tensor([30 / 40, 10 / 40]))
    assert torch.isnan(loss.weights[BODY_PARTS.index("elbow")]).all()


def test_each_image_uses_its_own_body_parts_weights():
    loss = WeightedBCELoss()
    loss.set_class_counts(COUNTS)
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    parts = torch.tensor([BODY_PARTS.index(p) for p in ("hand", "hand", "wrist", "wrist")])
    probs = torch.sigmoid(logits)
    weights = [30 / 40, 10 / 40, 30 / 40, 10 / 40]
    expected = [
        -w * (y * math.log(p) + (1 - y) * math.log(1 - p))
        for w, y, p in zip(weights, labels.tolist(), probs.tolist(), strict=True)
    ]
    torch.testing.assert_close(loss(logits, labels, parts), torch.tensor(sum(expected) / 4))


def test_weights_are_not_saved_in_checkpoints():
    loss = WeightedBCELoss()
    loss.set_class_counts(COUNTS)
    assert "weights" not in loss.state_dict()


def test_a_body_part_without_counts_is_a_clear_error():
    loss = WeightedBCELoss()
    loss.set_class_counts(COUNTS)
    with pytest.raises(MuraError, match="no training counts for elbow"):
        loss(torch.zeros(1), torch.ones(1), torch.tensor([BODY_PARTS.index("elbow")]))


def test_bce_and_focal_match_their_references():
    logits, labels, parts = torch.randn(16), (torch.rand(16) > 0.5).float(), torch.zeros(16, dtype=torch.long)
    expected_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(BCELoss()(logits, labels, parts), expected_bce)
    focal = FocalLoss(alpha=0.25, gamma=2.0)(logits, labels, parts)
    torch.testing.assert_close(focal, sigmoid_focal_loss(logits, labels, 0.25, 2.0, reduction="mean"))
    assert FocalLoss(alpha=-1, gamma=0.0)(logits, labels, parts).item() == pytest.approx(expected_bce.item())


def test_focal_rejects_negative_gamma():
    with pytest.raises(MuraError, match="loss.gamma=-1"):
        FocalLoss(alpha=0.25, gamma=-1)


def test_a_loss_on_studies_weighs_by_study_counts():
    loss = WeightedBCELoss()
    loss.set_class_counts(COUNTS, "studies")
    hand = BODY_PARTS.index("hand")
    torch.testing.assert_close(loss.weights[hand], torch.tensor([4 / 13, 9 / 13]))
    with pytest.raises(MuraError, match="class counts are in images or studies, not 'patients'"):
        loss.set_class_counts(COUNTS, "patients")
