"""Image- and study-level metrics: per-image predictions gathered across processes, grouped per study, scored
with torchmetrics."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pandas as pd
import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCohenKappa
from torchmetrics.utilities import dim_zero_cat

from mura_lightning.errors import MuraError

LEVELS = ("image", "study")
AGGREGATIONS = ("mean", "max")


@dataclass
class PredictionTable:
    """Aligned 1-D tensors of probabilities, labels, study ids, body-part indices and image ids (one row per
    image, or per study after `by_study`, where `image_ids` holds the study's first image)."""

    probs: torch.Tensor
    labels: torch.Tensor
    studies: torch.Tensor
    body_parts: torch.Tensor
    image_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.probs)

    def to_frame(self) -> pd.DataFrame:
        """The table as a DataFrame with columns prob, label, study, body_part, image_id."""
        columns = {"probs": "prob", "labels": "label", "studies": "study", "body_parts": "body_part"}
        return pd.DataFrame(
            {columns.get(f.name, "image_id"): getattr(self, f.name).cpu().numpy() for f in fields(self)}
        )

    def by_study(self, how: str) -> PredictionTable:
        """One row per study: the mean (or max) of its images' probabilities, its label and body part."""
        if how not in AGGREGATIONS:
            raise MuraError(f"model.study_aggregation={how!r} is not one of {', '.join(AGGREGATIONS)}")
        studies, inverse = torch.unique(self.studies, return_inverse=True)

        def reduce(values: torch.Tensor, op: str) -> torch.Tensor:
            out = torch.zeros(len(studies), dtype=values.dtype, device=values.device)
            return out.scatter_reduce(0, inverse, values, op, include_self=False)

        labels = reduce(self.labels, "amax")
        if not torch.equal(labels, reduce(self.labels, "amin")):
            raise MuraError("a study holds images with different labels; the index should have refused it")
        return PredictionTable(
            probs=reduce(self.probs, "mean" if how == "mean" else "amax"),
            labels=labels,
            studies=studies,
            body_parts=reduce(self.body_parts, "amax"),
            image_ids=reduce(self.image_ids, "amin"),
        )


class ImagePredictions(Metric):
    """Collects per-image predictions of one stage; `compute` returns them gathered from every process, each
    image once (distributed samplers repeat images to even out the ranks), ordered by image id."""

    full_state_update = False
    STATES = ("probs", "labels", "studies", "body_parts", "image_ids")

    def __init__(self) -> None:
        super().__init__()
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        studies: torch.Tensor,
        body_parts: torch.Tensor,
        image_ids: torch.Tensor,
    ) -> None:
        """Add a batch: probabilities and labels are stored as float32, the ids as int64."""
        self.probs.append(probs.detach().float().reshape(-1))
        self.labels.append(labels.detach().float().reshape(-1))
        self.studies.append(studies.detach().long().reshape(-1))
        self.body_parts.append(body_parts.detach().long().reshape(-1))
        self.image_ids.append(image_ids.detach().long().reshape(-1))

    def compute(self) -> PredictionTable:
        gathered = {name: dim_zero_cat(getattr(self, name)) for name in self.STATES}
        image_ids, first = _first_occurrence(gathered["image_ids"])
        return PredictionTable(**{name: values[first] for name, values in gathered.items()})


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ids and, for each, the position of its first occurrence in `ids`."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, positions, "amin")
    return unique, first


def build_metric_collection(threshold: float) -> MetricCollection:
    """Binary metrics on probabilities; no syncing across processes (they score already-gathered data)."""
    options = {"sync_on_compute": False}
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(threshold=threshold, **options),
            "auroc": BinaryAUROC(**options),
            "kappa": BinaryCohenKappa(threshold=threshold, **options),
        }
    )


class StageMetrics(nn.Module):
    """The predictions and metric collections of one stage (val or test), at image and study level."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.predictions = ImagePredictions()
        self.levels = nn.ModuleDict({level: build_metric_collection(threshold) for level in LEVELS})

    def update(self, probs, labels, studies, body_parts, image_ids) -> None:
        """Add a batch of per-image predictions."""
        self.predictions.update(probs, labels, studies, body_parts, image_ids)

    def compute(self, stage: str, aggregation: str) -> tuple[dict[str, float], dict[str, PredictionTable]]:
        """Metric values named `{stage}/{level}/{metric}`, and the image and study prediction tables."""
        images = self.predictions.compute()
        tables = {"image": images, "study": images.by_study(aggregation)}
        values = {}
        for level, table in tables.items():
            collection = self.levels[level]
            collection.reset()
            collection.update(table.probs, table.labels.long())
            for name, value in collection.compute().items():
                values[f"{stage}/{level}/{name}"] = float(value)
        return values, tables

    def reset(self) -> None:
        """Forget the collected predictions."""
        self.predictions.reset()
        for collection in self.levels.values():
            collection.reset()
