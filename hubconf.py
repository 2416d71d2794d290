"""Torch Hub entry points: `torch.hub.load(REPO_DIR, "mura_classifier", source="local", checkpoint=FILE)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from mura_lightning.inference.model import InferenceModel

dependencies = ["torch", "torchvision"]


def mura_classifier(
    checkpoint: str | Path | list[str | Path] | None = None, tta: str = "none", tta_degrees: float = 10.0
) -> InferenceModel:
    """A trained MURA abnormality classifier, ready for inference (eval mode, on the CPU).

    Args:
        checkpoint: a checkpoint written by `python -m mura_lightning.train`, e.g.
            `outputs/train/<date>_<time>/checkpoints/best-epoch003.ckpt` (required), or a list of them for an
            ensemble. The model is rebuilt from its saved settings and weights; nothing is downloaded. Needs this
            repository's package dependencies (`pip install REPO_DIR`).
        tta: test-time augmentation, `none`, `hflip` or `hflip_rotate`: the mean probability over the views.
        tta_degrees: the rotations of `hflip_rotate` (-tta_degrees and +tta_degrees).

    Returns:
        An `InferenceModel` carrying the checkpoint's preprocessing, threshold and study pooling:
        - `model.predict(["a.png", "b.png"])`: abnormality probabilities (N,) of radiographs given as file paths
          (PNG or DICOM), PIL images or uint8 arrays (gray, or RGB(A) channels-last), each on its own;
        - `model.predict_study(["a.png", "b.png"])`: the probability of the study whose views they are, and each
          view's weight in it (for a study pooling, e.g. attention, the model pools the views itself);
        - `model.preprocess("a.png")`: the normalised (C, S, S) tensor the model takes for one radiograph;
        - `model(batch)`: probabilities (N,) of a normalised batch (N, C, S, S); `model.score(batch, segments)`
          the study probabilities and view weights of a batch of whole studies;
        - `model.threshold`, `model.poolings`: abnormal iff probability > threshold; how each network scores a
          study (mean_prob: the mean of its images' probabilities). `model.to("cuda")` moves it to a GPU.
    """
    from mura_lightning.errors import MuraError
    from mura_lightning.inference.model import InferenceModel

    if checkpoint is None:
        raise MuraError(
            'mura_classifier needs a checkpoint: torch.hub.load(REPO_DIR, "mura_classifier", source="local", '
            "checkpoint=FILE) with a .ckpt from <run>/checkpoints/"
        )
    return InferenceModel.from_checkpoints(checkpoint, tta=tta, tta_degrees=tta_degrees)
