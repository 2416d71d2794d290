"""CAMs: grids in TensorBoard, the model left exactly as found, bf16 runs, and localisation scores checked
against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.runs import compose_run
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mura_lightning.callbacks.cam import CAPTION_HEIGHT, MIN_TILE_SIZE, captioned_tile, choose_sample
from mura_lightning.errors import MuraError
from mura_lightning.inference.explain import box_area, box_iou, compute_cams, pointing_game
from mura_lightning.models.backbones import build_backbone
from mura_lightning.synthetic import generate_synthetic_mura
from mura_lightning.train import train


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A small synthetic MURA with lesion boxes."""
    parent = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_mura(parent, studies_per_part=10, seed=2, min_side=64, max_side=128, num_workers=1)


def cam_overrides(*extra: str) -> list[str]:
    return [
        "bodypart=all",
        "data.val_fraction=0.2",
        "callbacks.cam.num_images=8",
        "callbacks.cam.localisation_images=8",
        *extra,
    ]


def read_events(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_grids_and_scores_reach_tensorboard(synthetic_root, tmp_path, precision):
    results = train(compose_run(synthetic_root, tmp_path, *cam_overrides(f"trainer.precision={precision}")))
    events = read_events(tmp_path / "run")
    assert {"val/1_cam", "test/1_cam"} <= set(events.Tags()["images"])
    grid = events.Images("test/1_cam")[-1]
    assert grid.width > 128 and grid.height > 128
    for stage in ("val", "test"):
        assert 0.0 <= results[f"{stage}/cam/pointing_game"] <= 1.0
        assert 0.0 <= results[f"{stage}/cam/iou"] <= 1.0
        assert 0.0 < results[f"{stage}/cam/box_area"] < 1.0
        assert f"{stage}/cam/pointing_game" in events.Tags()["scalars"]


class StateProbe(Callback):
    """Copies the model's weights, modes, requires_grad and gradients at on_validation_epoch_end."""

    def __init__(self) -> None:
        self.snapshots = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.snapshots.append(
            {
                "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "modes": {name: m.training for name, m in pl_module.named_modules()},
                "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
                "grads": {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.named_parameters()},
            }
        )


def test_the_callback_leaves_the_model_as_it_found_it(synthetic_root, tmp_path, monkeypatch):
    before, after = StateProbe(), StateProbe()
    import mura_lightning.train as train_module

    original = train_module.instantiate_all

    def with_probes(group):
        callbacks = original(group)
        if group is not None and "cam" in group:
            cam = next(c for c in callbacks if type(c).__name__ == "CAMCallback")
            index = callbacks.index(cam)
            return [*callbacks[:index], before, cam, after, *callbacks[index + 1 :]]
        return callbacks

    monkeypatch.setattr(train_module, "instantiate_all", with_probes)
    train(compose_run(synthetic_root, tmp_path, *cam_overrides("test=false")))
    assert before.snapshots and len(before.snapshots) == len(after.snapshots)
    for first, second in zip(before.snapshots, after.snapshots, strict=True):
        assert first["modes"] == second["modes"] and first["requires_grad"] == second["requires_grad"]
        assert first["state"].keys() == second["state"].keys()
        for key, value in first["state"].items():
            assert torch.equal(value, second["state"][key]), key
        for name, grad in first["grads"].items():
            assert (grad is None and second["grads"][name] is None) or torch.equal(grad, second["grads"][name])


def test_compute_cams_restores_modes_flags_and_gradients():
    net = build_backbone("resnet50", pretrained=False, in_chans=1)
    net.train()
    net.layer1.requires_grad_(False)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    cams = compute_cams(net, net.layer4[-1], torch.randn(3, 1, 64, 64), "GradCAM")
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert net.training and all(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer4.parameters())
    assert torch.equal(net.fc.weight.grad, torch.ones_like(net.fc.weight))
    assert net.conv1.weight.grad is None
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not net.layer4[-1]._forward_hooks


def test_cam_errors_are_clear():
    net = build_backbone("resnet50", pretrained=False, in_chans=1)
    with pytest.raises(MuraError, match="cam.method='GradKAM' is not a grad-cam method; choose one of .*GradCAM"):
        compute_cams(net, net.layer4[-1], torch.randn(1, 1, 32, 32), "GradKAM")
    with torch.inference_mode(), pytest.raises(MuraError, match="trainer.inference_mode=false"):
        compute_cams(net, net.layer4[-1], torch.randn(1, 1, 32, 32), "GradCAM")


def test_a_tile_draws_each_line_of_its_caption_whole():
    """The grid's longest caption (a study pooling's weight on the second line) is drawn whole on a 128 px tile:
    text on each line's band, none touching the tile's right edge (where a cut-off line would end)."""
    tile = captioned_tile(np.zeros((64, 64, 3), np.uint8), [], "shoulder abnormal\np=0.57 w=0.33")
    assert tile.shape == (3, MIN_TILE_SIZE + 2 * CAPTION_HEIGHT, MIN_TILE_SIZE)
    for line in range(2):
        band = tile[:, line * CAPTION_HEIGHT : (line + 1) * CAPTION_HEIGHT].amax(dim=0)
        lit_columns = band.amax(dim=0).nonzero()
        assert len(lit_columns) > 0, f"caption line {line + 1} is empty"
        assert lit_columns.max() < MIN_TILE_SIZE - 4, f"caption line {line + 1} runs off the tile"


def test_pointing_game_iou_and_box_area_on_hand_made_maps():
    cams = np.zeros((3, 8, 8), dtype=np.float32)
    cams[0, 2, 3] = 1.0  # inside image 0's box (x 2..5, y 1..4)
    cams[1, 7, 7] = 1.0  # outside image 1's box
    cams[2, 5, 1] = 1.0  # inside image 2's second box
    cams[0, 1:4, 2:4] = np.maximum(cams[0, 1:4, 2:4], 0.6)  # 6 hot pixels, all inside the 9-pixel box
    boxes = [[(2, 1, 5, 4)], [(0, 0, 2, 2)], [(6, 6, 8, 8), (0, 4, 3, 7)]]
    assert pointing_game(cams, boxes) == pytest.approx(2 / 3)
    # image 0: 6 hot in a 9-pixel box -> 6/9; image 1: 1 hot pixel outside a 4-pixel box -> 0/5;
    # image 2: 1 hot pixel inside boxes of 4 + 9 pixels -> 1/13
    assert box_iou(cams, boxes, threshold=0.5) == pytest.approx((6 / 9 + 0 + 1 / 13) / 3)
    assert box_area(boxes, (8, 8)) == pytest.approx((9 / 64 + 4 / 64 + 13 / 64) / 3)


def test_sample_is_balanced_spread_over_parts_and_reproducible():
    rows = pd.DataFrame(
        {
            "image_id": range(60),
            "label": [i % 2 for i in range(60)],
            "body_part": [("hand", "wrist", "elbow")[i % 3] for i in range(60)],
            "path": [f"img{i}.png" for i in range(60)],
        }
    )
    sample = choose_sample(rows, 12, seed=5)
    assert sample["label"].sum() == 6
    assert sample.groupby("label")["body_part"].nunique().tolist() == [3, 3]
    assert sample["image_id"].tolist() == choose_sample(rows, 12, seed=5)["image_id"].tolist()
    assert sample["image_id"].tolist() != choose_sample(rows, 12, seed=6)["image_id"].tolist()
    boxed = {f"img{i}.png": [(0, 0, 1, 1)] for i in (1, 3, 5)}
    with_boxes = choose_sample(rows, 6, seed=5, boxes=boxed)
    assert sorted(with_boxes[with_boxes["label"] == 1]["image_id"]) == [1, 3, 5]
