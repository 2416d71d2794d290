"""Class activation maps with the grad-cam package, overlays, and how well CAMs find lesion boxes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from mura_lightning.errors import MuraError
from mura_lightning.models.study_network import StudyLogit, StudyNetwork

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the CAM's grid, x1/y1 exclusive
ABNORMAL = 1


def cam_method(name: str) -> type[BaseCAM]:
    """The grad-cam class called `name` (GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ...)."""
    method = getattr(pytorch_grad_cam, name, None)
    if not (isinstance(method, type) and issubclass(method, BaseCAM)):
        choices = sorted(n for n, v in vars(pytorch_grad_cam).items() if isinstance(v, type) and issubclass(v, BaseCAM))
        raise MuraError(f"cam.method={name!r} is not a grad-cam method; choose one of {', '.join(choices)}")
    return method


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a block that may switch modes, set requires_grad and fill gradients, then put all of it back: each
    submodule's train/eval mode, each parameter's requires_grad and .grad."""
    modes = {name: module.training for name, module in model.named_modules()}
    params = dict(model.named_parameters())
    requires_grad = {name: p.requires_grad for name, p in params.items()}
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in params.items()}
    try:
        yield
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
        for name, p in params.items():
            p.requires_grad_(requires_grad[name])
            p.grad = grads[name]


def compute_cams(model: nn.Module, target_layer: nn.Module, inputs: torch.Tensor, method: str) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] of the abnormal logit of a one-logit `model` for a batch of inputs.

    Computed in float32 outside autocast with gradients on and the model in eval mode; the model is left
    exactly as it was (see `preserved_state`). Needs a context without inference mode.
    """
    if torch.is_inference_mode_enabled():
        raise MuraError("CAMs need gradients: set trainer.inference_mode=false (the default in conf/trainer)")
    device = next(model.parameters()).device
    with preserved_state(model), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        model.requires_grad_(True)
        model.eval()
        with cam_method(method)(model=model, target_layers=[target_layer]) as cam:
            targets = [BinaryClassifierOutputTarget(ABNORMAL)] * len(inputs)
            return cam(input_tensor=inputs.to(device=device, dtype=torch.float32), targets=targets)


def study_cams(
    network: StudyNetwork, target_layer: nn.Module, inputs: torch.Tensor, studies: torch.Tensor, method: str
) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] of a network with a study pooling: for each study of the batch (`studies`: each
    view's study), Grad-CAM of the study's logit on each of its views (see `compute_cams`)."""
    cams: list[np.ndarray | None] = [None] * len(inputs)
    for study in torch.unique(studies).tolist():
        rows = torch.nonzero(studies == study).squeeze(1)
        study = compute_cams(StudyLogit(network), target_layer, inputs[rows], method)
        for row, cam in zip(rows.tolist(), study, strict=True):
            cams[row] = cam
    return np.stack(cams)


def batch_cams(
    network: StudyNetwork, target_layer: nn.Module, inputs: torch.Tensor, studies: torch.Tensor, method: str
) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] of a batch as its network explains its decisions: for a study pooling, each study's
    logit on its views (`study_cams`, `studies` each view's study); else each image's own logit (`compute_cams`)."""
    if network.pooling.trains_on_studies:
        return study_cams(network, target_layer, inputs, studies, method)
    return compute_cams(network, target_layer, inputs, method)


def overlay(gray: np.ndarray, cam: np.ndarray, image_weight: float) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture: the (H, W) uint8 radiograph under the CAM's jet heatmap, the CAM stretched
    to the radiograph's size (bilinear) where it was computed at the model's input size."""
    if cam.shape != gray.shape:
        grid = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
        cam = F.interpolate(grid, size=gray.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    rgb = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=image_weight)


def _box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Pixels (by their centres) inside any of the boxes."""
    ys = np.arange(shape[0])[:, None] + 0.5
    xs = np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask


def pointing_game(cams: np.ndarray, boxes: Sequence[Sequence[Box]]) -> float:
    """Share of images whose CAM maximum (its first pixel, in row-major order, on ties) lies inside one of
    their lesion boxes."""
    hits = []
    for cam, image_boxes in zip(cams, boxes, strict=True):
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        hits.append(bool(_box_mask(image_boxes, cam.shape)[y, x]))
    return float(np.mean(hits))


def box_iou(cams: np.ndarray, boxes: Sequence[Sequence[Box]], threshold: float) -> float:
    """Mean over images of the IoU between the CAM above `threshold` and the union of the lesion boxes."""
    ious = []
    for cam, image_boxes in zip(cams, boxes, strict=True):
        hot, inside = cam >= threshold, _box_mask(image_boxes, cam.shape)
        union = np.logical_or(hot, inside).sum()
        ious.append(np.logical_and(hot, inside).sum() / union if union else 0.0)
    return float(np.mean(ious))


def box_area(boxes: Sequence[Sequence[Box]], shape: tuple[int, int]) -> float:
    """Mean share of the image covered by the lesion boxes: the pointing game's chance level."""
    return float(np.mean([_box_mask(image_boxes, shape).mean() for image_boxes in boxes]))
