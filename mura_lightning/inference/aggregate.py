"""Study probabilities from image probabilities."""

from __future__ import annotations

import torch

from mura_lightning.errors import MuraError

AGGREGATIONS = ("mean", "max")


def aggregate_studies(probs: torch.Tensor, studies: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct study ids (ascending) and each study's probability: the mean (or max) of its images'
    probabilities. NaN marks an image that could not be read: it is left out, and a study with no readable
    image gets NaN.

    mean: p_s = sum(p_i for readable i in s) / #readable(s);  max: p_s = max(p_i for readable i in s).
    """
    if how not in AGGREGATIONS:
        raise MuraError(f"study_aggregation={how!r} is not one of {', '.join(AGGREGATIONS)}")
    ids, inverse = torch.unique(studies, return_inverse=True)
    readable = ~torch.isnan(probs)
    zeros = torch.zeros(len(ids), dtype=probs.dtype, device=probs.device)
    counts = zeros.scatter_add(0, inverse, readable.to(probs.dtype))
    if how == "mean":
        sums = zeros.scatter_add(0, inverse, torch.where(readable, probs, 0.0))
        values = sums / counts
    else:
        floor = torch.full_like(zeros, -torch.inf)
        values = floor.scatter_reduce(0, inverse, torch.where(readable, probs, -torch.inf), "amax")
    return ids, torch.where(counts > 0, values, torch.nan)
