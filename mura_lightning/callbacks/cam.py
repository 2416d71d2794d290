"""CAMCallback: Grad-CAM heatmaps of a fixed sample of radiographs in TensorBoard, and localisation scores."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import pandas as pd
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from mura_lightning.callbacks.layout import figure_tag
from mura_lightning.data.images import read_grayscale
from mura_lightning.data.lesions import lesion_boxes_by_path, read_lesion_boxes, scale_boxes
from mura_lightning.data.presets import EvalPreset
from mura_lightning.evaluation.metrics import CLASS_NAMES
from mura_lightning.inference.explain import (
    Box,
    box_area,
    box_iou,
    compute_cams,
    overlay,
    pointing_game,
    preserved_state,
    study_cams,
)
from mura_lightning.inference.model import InferenceModel
from mura_lightning.models.segments import Segments

log = logging.getLogger(__name__)

CAPTION_HEIGHT = 14  # per caption line
MIN_TILE_SIZE = 128
BOX_COLOUR = (0, 255, 0)


class CAMCallback(Callback):
    """Every `every_n_epochs` validation epochs and at the end of testing, on rank 0: CAMs (grad-cam `method`
    on the model's `cam_layer`, target the abnormal logit) of a fixed sample of `num_images` images of the
    stage, half normal and half abnormal, spread over body parts, drawn as one grid under the TensorBoard
    tag `{stage}/1_cam` (`figure_tag`; each tile captioned with body part, label and predicted probability;
    lesion boxes outlined where known). For a model with a study pooling the grid shows whole studies (their views
    side by side, up to `num_images` tiles): Grad-CAM of the study's logit on each view, each tile captioned with
    its study's probability and the view's weight `w` in it (attention weights, for attention pooling).

    When the data has lesion boxes (synthetic MURA), it also logs `{stage}/cam/pointing_game` (share of
    abnormal images whose CAM maximum lies in a lesion box), `{stage}/cam/iou` (IoU of the CAM above
    `iou_threshold` with the boxes) and `{stage}/cam/box_area` (the boxes' share of the image: the pointing
    game's chance level), over up to `localisation_images` lesion images; and `{stage}/cam/seconds`.
    """

    def __init__(
        self,
        method: str = "GradCAM",
        num_images: int = 16,
        every_n_epochs: int = 1,
        localisation_images: int = 64,
        iou_threshold: float = 0.5,
        image_weight: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.method = method
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.localisation_images = localisation_images
        self.iou_threshold = iou_threshold
        self.image_weight = image_weight
        self.seed = seed

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == "fit"
        if trainer.sanity_checking or (fitting and (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        self._explain(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._explain(trainer, pl_module, "test")

    def _explain(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        started = time.perf_counter()
        datamodule = trainer.datamodule
        rows = datamodule.image_table()
        rows = rows[rows["subset"] == stage]
        boxes = lesion_boxes_by_path(read_lesion_boxes(datamodule.root))
        sample = choose_sample(rows, self.num_images, self.seed, boxes)
        if pl_module.pools_studies:
            sample = whole_studies(rows, sample, self.num_images)
        cams, probs, weights, images = self._cams(pl_module, datamodule, sample)
        image_boxes = scale_boxes(boxes, sample["path"], images.sizes, cams.shape[1:])
        shown_weights = weights if pl_module.pools_studies else [None] * len(weights)
        grid = self._grid(images.pixels, cams, sample, probs, shown_weights, image_boxes)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(figure_tag(stage, "cam"), grid, global_step=trainer.global_step)
        values = {f"{stage}/cam/seconds": time.perf_counter() - started}
        if boxes:
            values.update(self._localisation(pl_module, datamodule, rows, boxes, stage))
        pl_module.log_dict(values, rank_zero_only=True)

    def _cams(
        self, pl_module, datamodule, sample: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, EvalImages]:
        """CAMs of the sample's images (whole studies, for a study pooling); per image, its study's probability
        (the image's own, for an image pooling) and its weight in it; and the images."""
        images = load_eval_images(datamodule.image_table(), list(sample["image_id"]), pl_module.eval_preset())
        studies = torch.tensor(sample["study_id"].to_numpy())  # a copy: pandas hands out a read-only array
        network, layer = pl_module.network(), pl_module.cam_target_layer()
        if pl_module.pools_studies:
            cams = study_cams(network, layer, images.inputs, studies, self.method)
        else:
            cams = compute_cams(network, layer, images.inputs, self.method)
            studies = torch.arange(len(sample))  # each image scored on its own
        with torch.no_grad(), preserved_state(pl_module):
            model = InferenceModel.from_classifiers([pl_module])
            segments, _ = Segments.of(studies.to(pl_module.device))
            scores = model.score(images.inputs.to(pl_module.device), segments)
        probs = segments.spread(scores.study_probs).cpu().numpy()
        return cams, probs, scores.weights.cpu().numpy(), images

    def _localisation(self, pl_module, datamodule, rows: pd.DataFrame, boxes: dict, stage: str) -> dict[str, float]:
        lesion_rows = rows[rows["path"].isin(boxes)].sort_values("image_id")
        chosen = lesion_rows.sample(min(len(lesion_rows), self.localisation_images), random_state=self.seed)
        if chosen.empty:
            return {}
        sample = whole_studies(rows, chosen, len(rows)) if pl_module.pools_studies else chosen
        cams, _, _, images = self._cams(pl_module, datamodule, sample)
        lesion = sample["path"].isin(boxes).to_numpy()
        cams, sizes = cams[lesion], [size for size, keep in zip(images.sizes, lesion, strict=True) if keep]
        scaled = scale_boxes(boxes, sample["path"][lesion], sizes, cams.shape[1:])
        return {
            f"{stage}/cam/pointing_game": pointing_game(cams, scaled),
            f"{stage}/cam/iou": box_iou(cams, scaled, self.iou_threshold),
            f"{stage}/cam/box_area": box_area(scaled, cams.shape[1:]),
        }

    def _grid(self, pixels, cams, sample: pd.DataFrame, probs, weights, image_boxes) -> torch.Tensor:
        tiles = []
        rows = sample.itertuples(index=False)
        for gray, cam, row, prob, weight, tile_boxes in zip(
            pixels, cams, rows, probs, weights, image_boxes, strict=True
        ):
            caption = f"{row.body_part} {CLASS_NAMES[int(row.label)]}\np={prob:.2f}"
            if weight is not None:
                caption += f" w={weight:.2f}"
            tiles.append(captioned_tile(overlay(gray, cam, self.image_weight), tile_boxes, caption))
        return make_grid(torch.stack(tiles), nrow=int(np.ceil(np.sqrt(len(tiles)))), padding=2)


@dataclass
class EvalImages:
    """Images as the model sees them in evaluation: `pixels` (N, S, S) uint8, `inputs` (N, C, S, S) normalised,
    and each original (height, width), for drawing and for scaling boxes."""

    pixels: np.ndarray
    inputs: torch.Tensor
    sizes: list[tuple[int, int]]


def load_eval_images(rows: pd.DataFrame, image_ids: list[int], preset: EvalPreset) -> EvalImages:
    """The images of these ids (index rows with `image_id` and `path`) through the evaluation preset."""
    paths = rows.set_index("image_id").loc[image_ids, "path"]
    grays = [read_grayscale(path) for path in paths]
    resized = [preset.resize(gray) for gray in grays]
    return EvalImages(
        pixels=torch.cat(resized).numpy(),
        inputs=torch.stack([preset.normalize(image) for image in resized]),
        sizes=[gray.shape for gray in grays],
    )


def choose_sample(rows: pd.DataFrame, count: int, seed: int, boxes: dict | None = None) -> pd.DataFrame:
    """A reproducible sample of `count` images: half abnormal (those with lesion boxes when known), half
    normal, each half taken in turn from the body parts in a seeded random order."""
    rng = np.random.default_rng(seed)
    picked = []
    for label, share in ((1, count - count // 2), (0, count // 2)):
        pool = rows[rows["label"] == label]
        if label == 1 and boxes:
            pool = pool[pool["path"].isin(boxes)]
        queues = {
            part: list(group["image_id"].to_numpy()[rng.permutation(len(group))])
            for part, group in pool.sort_values("image_id").groupby("body_part")
        }
        while share and any(queues.values()):
            for queue in queues.values():
                if queue and share:
                    picked.append(queue.pop(0))
                    share -= 1
    return rows.set_index("image_id").loc[picked].reset_index()


def whole_studies(rows: pd.DataFrame, sample: pd.DataFrame, count: int) -> pd.DataFrame:
    """The studies of the sample's images, each with all its views (in image order), taken abnormal and normal in
    turn while they fit in `count` images (the first always)."""
    by_label = [list(dict.fromkeys(sample.loc[sample["label"] == label, "study_id"])) for label in (1, 0)]
    order = [study for pair in zip_longest(*by_label) for study in pair if study is not None]
    views = rows.sort_values("image_id").groupby("study_id")["image_id"].apply(list)
    chosen: list[int] = []
    for study in order:
        if chosen and len(chosen) + len(views[study]) > count:
            continue
        chosen.extend(views[study])
    return rows.set_index("image_id").loc[chosen].reset_index()


def captioned_tile(picture: np.ndarray, boxes: list[Box], caption: str) -> torch.Tensor:
    """A (3, H, W) uint8 tile: the overlay (enlarged to at least MIN_TILE_SIZE), box outlines, above them a
    caption of one line per line of `caption` (tiles of one grid need captions of as many lines)."""
    size = max(MIN_TILE_SIZE, picture.shape[0])
    scale = size / picture.shape[0]
    top = CAPTION_HEIGHT * (caption.count("\n") + 1)
    image = Image.fromarray(picture).resize((size, size), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size + top))
    canvas.paste(image, (0, top))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * scale, y0 * scale + top, x1 * scale, y1 * scale + top], outline=BOX_COLOUR)
    font = ImageFont.load_default()
    for line, text in enumerate(caption.split("\n")):
        draw.text((2, 1 + line * CAPTION_HEIGHT), text, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)
