"""Torch Hub entry points: `torch.hub.load(REPO_DIR, "mura_classifier", source="local", checkpoint=FILE)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from mura_lightning.deploy import MuraInference

dependencies = ["torch", "torchvision"]


def mura_classifier(checkpoint: str | Path | None = None) -> MuraInference:
    """A trained MURA abnormality classifier, ready for inference (eval mode, on the CPU).

    Args:
        checkpoint: a checkpoint written by `python -m mura_lightning.train`, e.g.
            `outputs/train/<date>_<time>/checkpoints/best-epoch003.ckpt` (required). The model is rebuilt from its
            saved settings and weights; nothing is downloaded. Needs this repository's package dependencies
            (`pip install REPO_DIR`).

    Returns:
        A `MuraInference` module carrying the checkpoint's preprocessing:
        - `model.predict(["a.png", "b.png"])`: abnormality probabilities (N,) of radiographs given as file paths,
          PIL images or uint8 arrays;
        - `model.preprocess("a.png")`: the normalised (C, S, S) tensor the model takes for one radiograph;
        - `model(batch)`: probabilities (N,) of a normalised batch (N, C, S, S).
        A study's probability is the mean of its images' probabilities. `model.to("cuda")` moves it to a GPU.
    """
    from mura_lightning.deploy import MuraInference
    from mura_lightning.errors import MuraError

    if checkpoint is None:
        raise MuraError(
            'mura_classifier needs a checkpoint: torch.hub.load(REPO_DIR, "mura_classifier", source="local", '
            "checkpoint=FILE) with a .ckpt from <run>/checkpoints/"
        )
    return MuraInference.from_checkpoint(checkpoint).eval()
