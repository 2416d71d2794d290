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
from mura_lightning.data.study_batches import StudyBatchSampler
from mura_lightning.inference.model import InferenceModel
from mura_lightning.models.segments import Segments
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
    """Per file, in input order: the probability (NaN where the file could not be read), its weight in its study's
    score (NaN likewise) and the error ("" if none); per study (by its code), the study's probability (NaN when
    none of its files could be read)."""

    probs: np.ndarray
    weights: np.ndarray
    study_probs: np.ndarray
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
    studies: Sequence[int] | np.ndarray | None = None,
    batch_size: int,
    num_workers: int = 0,
    on_batch: BatchHook | None = None,
) -> FilePredictions:
    """The model's probabilities for every file and every study, computed on the model's device in batches of
    whole studies (`studies`: each file's study as a code 0, 1, ...; None: every file a study of its own; see
    StudyBatchSampler). `on_batch(batch, probs)` is called with each batch's readable images (keys index, study,
    pixels, input) and their probabilities."""
    device = next(model.parameters()).device
    codes = np.arange(len(files)) if studies is None else np.asarray(studies, dtype=np.int64)
    sampler = StudyBatchSampler(codes, batch_size, train=False)
    loader = DataLoader(RadiographFiles(files, model.preset), batch_sampler=sampler, num_workers=num_workers)
    probs, weights = np.full(len(files), np.nan), np.full(len(files), np.nan)
    study_probs = np.full(int(codes.max()) + 1 if len(codes) else 0, np.nan)
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
            readable["study"] = torch.as_tensor(codes[readable["index"].numpy()])
            segments, ids = Segments.of(readable["study"].to(device))
            scores = model.score(readable["input"].to(device), segments)
            positions = readable["index"].numpy()
            probs[positions], weights[positions] = scores.view_probs.cpu().numpy(), scores.weights.cpu().numpy()
            study_probs[ids.cpu().numpy()] = scores.study_probs.cpu().numpy()
            if on_batch is not None:
                on_batch(readable, scores.view_probs.cpu())
    return FilePredictions(probs, weights, study_probs, errors)
