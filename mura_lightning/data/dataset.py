"""A torch Dataset over rows of the MURA index."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from mura_lightning.data.cache import ImageCache
from mura_lightning.data.images import ImageDecodeError, read_grayscale
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.data.presets import EvalPreset, TrainPreset

log = logging.getLogger(__name__)

ITEM_KEYS = ("image", "label", "study", "body_part", "image_id")


class MuraImageDataset(Dataset):
    """Images of a slice of the MURA index, each as a dict of tensors.

    Keys: `image`, `label` (float 0/1), `study` (the study's integer id), `body_part` (index into BODY_PARTS),
    `image_id` (the row's integer id in the full index). `frame` must hold the columns `path`, `label`,
    `body_part`, `study_id` and `image_id`.

    The image is resized by `preset` (or read already resized from `cache`), randomly flipped and rotated when
    `augment` (which needs a TrainPreset), and normalised; with `raw=True` it stays the (1, S, S) uint8 tensor, for
    augmentation and normalisation on the device. With `on_error="skip"`, an image that cannot be decoded is warned
    about once, counted in `skipped`, and returned as None, which `collate_skipping_none` drops from its batch.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        preset: EvalPreset | TrainPreset,
        augment: bool,
        on_error: str,
        cache: ImageCache | None = None,
        raw: bool = False,
    ) -> None:
        self.paths = frame["path"].to_numpy(dtype=object)
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
        self.studies = torch.tensor(frame["study_id"].to_numpy(), dtype=torch.int64)
        part_index = {part: i for i, part in enumerate(BODY_PARTS)}
        self.body_parts = torch.tensor(frame["body_part"].map(part_index).to_numpy(), dtype=torch.int64)
        self.image_ids = torch.tensor(frame["image_id"].to_numpy(), dtype=torch.int64)
        self.preset = preset
        self.augment = augment
        self.on_error = on_error
        self.cache = cache
        self.raw = raw
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, position: int) -> torch.Tensor | None:
        """The resized (1, S, S) uint8 image at `position`, or None for a bad file under on_error=skip."""
        path = self.paths[position]
        cached = self.cache[path] if self.cache is not None else None
        if cached is not None:
            return torch.from_numpy(cached).unsqueeze(0)
        try:
            return self.preset.resize(read_grayscale(path))
        except ImageDecodeError as err:
            if self.on_error != "skip":
                raise ImageDecodeError(f"{err} Or set data.on_error=skip to leave it out with a warning.") from err
            if path not in self.skipped:
                self.skipped.add(path)
                log.warning("skipping an image (data.on_error=skip): %s", err)
            return None

    def __getitem__(self, position: int) -> dict[str, torch.Tensor] | None:
        image = self.load(position)
        if image is None:
            return None
        if self.augment:
            image = self.preset.augment(image)
        return {
            "image": image if self.raw else self.preset.normalize(image),
            "label": self.labels[position],
            "study": self.studies[position],
            "body_part": self.body_parts[position],
            "image_id": self.image_ids[position],
        }


def collate_skipping_none(items: list[dict | None]) -> dict[str, torch.Tensor] | None:
    """Default collation of the items that are not None; None when none is left."""
    kept = [item for item in items if item is not None]
    return default_collate(kept) if kept else None
