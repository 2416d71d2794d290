"""The error gallery: the test studies the model was most sure of and wrong about (false negatives, false
positives) and a few it was most sure of and right about (true positives), each view with its probability and a
Grad-CAM overlay computed from the checkpoint(s) through the inference core, lesion boxes outlined where known."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mura_lightning.callbacks.cam import captioned_tile, load_eval_images
from mura_lightning.data.lesions import lesion_boxes_by_path, read_lesion_boxes, scale_boxes
from mura_lightning.errors import MuraError
from mura_lightning.inference.device import choose_device
from mura_lightning.inference.explain import compute_cams, overlay, study_cams
from mura_lightning.inference.model import InferenceModel
from mura_lightning.reporting.figures import png_bytes_uri

FALSE_NEGATIVES, FALSE_POSITIVES, TRUE_POSITIVES = "false negatives", "false positives", "true positives"
GROUPS = {  # group -> (label, decision, most confident first: highest probability first?)
    FALSE_NEGATIVES: (1, 0, False),
    FALSE_POSITIVES: (0, 1, True),
    TRUE_POSITIVES: (1, 1, True),
}


@dataclass(frozen=True)
class GallerySettings:
    """`reporting.gallery`: studies per error group (`per_group`), true positives shown (`true_positives`), views
    shown per study (`max_views`), the grad-cam method, the overlay's radiograph weight and the device."""

    per_group: int = 4
    true_positives: int = 2
    max_views: int = 8
    cam_method: str = "GradCAM"
    image_weight: float = 0.5
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("per_group", "true_positives", "max_views"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MuraError(f"reporting.gallery.{name}={value!r} must be a whole number, 0 or more")


@dataclass(frozen=True)
class View:
    """One radiograph of a gallery study: its path, probability and overlay (a PNG data URI; None without CAMs)."""

    path: str
    prob: float
    picture: str | None


@dataclass(frozen=True)
class GalleryStudy:
    """A study of the gallery: its row of the prediction file and its views."""

    group: str
    study: str
    body_part: str
    patient: str
    label: int
    prob: float
    pred: int
    views: list[View]


def pick_studies(studies: pd.DataFrame, settings: GallerySettings) -> dict[str, pd.DataFrame]:
    """The study rows of each group, most confident first: false negatives by lowest probability, false positives
    and true positives by highest (ties by study path); `per_group` of each error group and `true_positives`."""
    counts = {FALSE_NEGATIVES: settings.per_group, FALSE_POSITIVES: settings.per_group}
    counts[TRUE_POSITIVES] = settings.true_positives
    picked = {}
    for group, (label, pred, descending) in GROUPS.items():
        rows = studies[(studies["label"] == label) & (studies["pred"] == pred)]
        key = -rows["prob"] if descending else rows["prob"]
        order = rows.assign(_key=key).sort_values(["_key", "study"], kind="stable")
        picked[group] = order.drop(columns="_key").head(counts[group]).reset_index(drop=True)
    return picked


def build_gallery(
    studies: pd.DataFrame,
    images: pd.DataFrame,
    checkpoints: Sequence[str],
    data_root: Path | None,
    settings: GallerySettings,
) -> tuple[dict[str, list[GalleryStudy]], str]:
    """The gallery's studies by group, with their views (up to `max_views`, by path) and CAM overlays of the
    checkpoints' networks (the mean CAM of an ensemble's members), and a note on what could not be drawn (no
    checkpoint, missing image files)."""
    picked = pick_studies(studies, settings)
    chosen = pd.concat(picked.values(), ignore_index=True)
    views = images[images["study"].isin(chosen["study"])].sort_values(["study", "path"])
    views = views.groupby("study", sort=False).head(settings.max_views).reset_index(drop=True)
    pictures, note = _pictures(views, checkpoints, data_root, settings)
    gallery = {}
    for group, rows in picked.items():
        gallery[group] = [
            GalleryStudy(
                group=group,
                study=row.study,
                body_part=row.body_part,
                patient=row.patient,
                label=int(row.label),
                prob=float(row.prob),
                pred=int(row.pred),
                views=[
                    View(view.path, float(view.prob), pictures.get(view.path))
                    for view in views[views["study"] == row.study].itertuples(index=False)
                ],
            )
            for row in rows.itertuples(index=False)
        ]
    return gallery, note


def _pictures(
    views: pd.DataFrame, checkpoints: Sequence[str], data_root: Path | None, settings: GallerySettings
) -> tuple[dict[str, str], str]:
    """Image path -> CAM overlay data URI for the views whose files and checkpoints are there; a note on the rest."""
    missing_checkpoints = [path for path in checkpoints if not Path(path).is_file()]
    if not checkpoints or missing_checkpoints:
        return {}, f"no CAMs: the checkpoint is not there ({', '.join(missing_checkpoints) or 'none recorded'})"
    present = views[[Path(path).is_file() for path in views["path"]]]
    notes = []
    if len(present) < len(views):
        notes.append(f"{len(views) - len(present)} view(s) whose image file is gone are shown without a picture.")
    if present.empty:
        return {}, " ".join(notes)
    model = InferenceModel.from_checkpoints(list(checkpoints)).to(choose_device(settings.device))
    rows = present.assign(image_id=range(len(present)))
    loaded = load_eval_images(rows, list(rows["image_id"]), model.preset)
    studies = torch.as_tensor(pd.factorize(rows["study"])[0])
    cams = np.mean(
        [
            study_cams(net, layer, loaded.inputs, studies, settings.cam_method)
            if net.pooling.trains_on_studies
            else compute_cams(net, layer, loaded.inputs, settings.cam_method)
            for net, layer in zip(model.members(), model.cam_target_layers(), strict=True)
        ],
        axis=0,
    )
    boxes = lesion_boxes_by_path(read_lesion_boxes(data_root)) if data_root is not None else {}
    scaled = scale_boxes(boxes, rows["path"], loaded.sizes, cams.shape[1:])
    pictures = {}
    for path, gray, cam, view_boxes, prob in zip(rows["path"], loaded.pixels, cams, scaled, rows["prob"], strict=True):
        tile = captioned_tile(overlay(gray, cam, settings.image_weight), view_boxes, f"p={prob:.3f}")
        pictures[path] = _png_uri(tile)
    if boxes:
        notes.append("Green boxes: the lesions the synthetic data drew.")
    return pictures, " ".join(notes)


def _png_uri(tile: torch.Tensor) -> str:
    buffer = io.BytesIO()
    Image.fromarray(tile.permute(1, 2, 0).numpy()).save(buffer, format="PNG", optimize=True)
    return png_bytes_uri(buffer.getvalue())
