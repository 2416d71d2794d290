"""Probabilities for radiograph files: decoded, preprocessed and batched; unreadable files carried, not fatal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mura_lightning.data.images import ImageDecodeError, read_grayscale
from mura_lightning.data.presets import EvalPreset
from mura_lightning.inference.model import InferenceModel
from mura_lightning.progress import progress


class RadiographFiles(Dataset):
    """Each file as its resized uint8 pixels (1, S, S) and model input (C, S, S); a file that cannot be decoded
    yields zeros and its error message instead."""

    def __init__(self, files: Sequence[str | Path], preset: EvalPreset) -> None:
        self.files = list(files)
        self.preset = preset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        try:
            pixels, error = self.preset.resize(read_grayscale(self.files[index])), ""
        except ImageDecodeError as err:
            size = self.preset.preprocessing.image_size
            pixels, error = torch.zeros(1, size, size, dtype=torch.uint8), str(err)
        return {
            "index": index,
            "ok": not error,
            "error": error,
            "pixels": pixels,
            "input": self.preset.normalize(pixels),
        }


@dataclass
class FilePredictions:
    """Per file, in input order: the probability (NaN where the file could not be read) and the error ("" if none)."""

    probs: np.ndarray
    errors: list[str]

    @property
    def failed(self) -> int:
        """How many files could not be read."""
        return sum(1 for error in self.errors if error)


BatchHook = Callable[[dict, torch.Tensor], None]


def predict_files(
    model: InferenceModel,
    files: Sequence[str | Path],
    *,
    batch_size: int,
    num_workers: int = 0,
    on_batch: BatchHook | None = None,
) -> FilePredictions:
    """The model's probabilities for every file, computed on the model's device in batches. `on_batch(batch,
    probs)` is called with each batch's readable images (keys index, pixels, input) and their probabilities."""
    device = next(model.parameters()).device
    loader = DataLoader(RadiographFiles(files, model.preset), batch_size=batch_size, num_workers=num_workers)
    probs = np.full(len(files), np.nan)
    errors = [""] * len(files)
    with torch.no_grad(), progress(f"predicting {len(files)} images", total=len(files), unit="images") as bar:
        for batch in loader:
            bar.advance(len(batch["index"]))
            for index, error in zip(batch["index"].tolist(), batch["error"], strict=True):
                errors[index] = error
            ok = batch["ok"]
            if not ok.any():
                continue
            readable = {key: batch[key][ok] for key in ("index", "pixels", "input")}
            batch_probs = model(readable["input"].to(device)).cpu()
            probs[readable["index"].numpy()] = batch_probs.numpy()
            if on_batch is not None:
                on_batch(readable, batch_probs)
    return FilePredictions(probs, errors)
