"""Image- and study-level metrics: per-image predictions gathered across processes, grouped per study, scored
with torchmetrics, overall and per body part."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import pandas as pd
import torch
from torch import nn
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryCohenKappa,
    BinaryConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers import ClasswiseWrapper

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.calibration import CALIBRATION_BINS, calibrated_probabilities
from mura_lightning.inference.aggregate import aggregate_studies

LEVELS = ("image", "study")
CLASS_NAMES = ("normal", "abnormal")
METRIC_NAMES = (
    "kappa",
    "auroc",
    "average_precision",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision_abnormal",
    "recall_abnormal",
    "f1_abnormal",
    "precision_normal",
    "recall_normal",
    "f1_normal",
    "true_negatives",
    "false_positives",
    "false_negatives",
    "true_positives",
    "ece",
    "brier",
)
THRESHOLD_COLUMN = "threshold"


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
        """The table as a DataFrame with columns prob, label, study, body_part (name), image_id."""
        frame = pd.DataFrame({f.name: getattr(self, f.name).cpu().numpy() for f in fields(self)})
        frame = frame.rename(columns={"probs": "prob", "labels": "label", "studies": "study", "image_ids": "image_id"})
        frame["body_part"] = [BODY_PARTS[i] for i in frame.pop("body_parts")]
        frame["label"] = frame["label"].astype("int64")
        return frame

    def to(self, device: torch.device | str) -> PredictionTable:
        """The table with every tensor on `device`."""
        return PredictionTable(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, mask: torch.Tensor) -> PredictionTable:
        """The rows where `mask` is true."""
        return PredictionTable(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def by_study(self, how: str) -> PredictionTable:
        """One row per study: the mean (or max) of its images' probabilities (see `aggregate_studies`), its label
        and body part."""
        studies, probs = aggregate_studies(self.probs, self.studies, how)
        inverse = torch.searchsorted(studies, self.studies)

        def reduce(values: torch.Tensor, op: str) -> torch.Tensor:
            out = torch.zeros(len(studies), dtype=values.dtype, device=values.device)
            return out.scatter_reduce(0, inverse, values, op, include_self=False)

        labels = reduce(self.labels, "amax")
        if not torch.equal(labels, reduce(self.labels, "amin")):
            raise MuraError("a study holds images with different labels; the index should have refused it")
        return PredictionTable(
            probs=probs,
            labels=labels,
            studies=studies,
            body_parts=reduce(self.body_parts, "amax"),
            image_ids=reduce(self.image_ids, "amin"),
        )


class ImagePredictions(Metric):
    """Collects per-image predictions of one stage (or per-study ones, with `unique_by="studies"`); `compute`
    returns them gathered from every process, each image (study) once (distributed samplers repeat batches to even
    out the ranks), ordered by that id. States are float32 (probabilities, labels) and int64 (ids), so bf16 runs
    and gloo all-gathers work."""

    full_state_update = False
    STATES = ("probs", "labels", "studies", "body_parts", "image_ids")

    def __init__(self, unique_by: str = "image_ids") -> None:
        super().__init__()
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.unique_by = unique_by

    def update(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        studies: torch.Tensor,
        body_parts: torch.Tensor,
        image_ids: torch.Tensor,
    ) -> None:
        """Add a batch of per-image predictions."""
        self.probs.append(probs.detach().float().reshape(-1))
        self.labels.append(labels.detach().float().reshape(-1))
        self.studies.append(studies.detach().long().reshape(-1))
        self.body_parts.append(body_parts.detach().long().reshape(-1))
        self.image_ids.append(image_ids.detach().long().reshape(-1))

    def compute(self) -> PredictionTable:
        gathered = {name: dim_zero_cat(getattr(self, name)) for name in self.STATES}
        first = _first_occurrences(gathered[self.unique_by])
        return PredictionTable(**{name: values[first] for name, values in gathered.items()})


def _first_occurrences(ids: torch.Tensor) -> torch.Tensor:
    """For each distinct id in ascending order, the position of its first occurrence in `ids`."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), dtype=torch.long, device=ids.device)
    return first.scatter_reduce(0, inverse, positions, "amin")


def _classwise(metric_class: type, name: str) -> ClasswiseWrapper:
    return ClasswiseWrapper(
        metric_class(num_classes=2, average=None, sync_on_compute=False), labels=list(CLASS_NAMES), prefix=f"{name}_"
    )


def row_thresholds(threshold: float | torch.Tensor, body_parts: torch.Tensor) -> float | torch.Tensor:
    """The threshold of each row of a table: `threshold` itself when it is one number, else (a tensor with one
    threshold per BODY_PARTS entry) the threshold of each row's body part."""
    if isinstance(threshold, torch.Tensor) and threshold.ndim == 1:
        return threshold.to(body_parts.device)[body_parts]
    return float(threshold)


class BinaryScores(nn.Module):
    """torchmetrics for one set of predictions: AUROC and average precision on probabilities; expected
    calibration error (15 equal-width bins, L1) and Brier score (mean squared error of the probability);
    accuracy, Cohen's kappa, per-class precision, recall and F1, and the confusion matrix on decisions (abnormal
    iff prob > threshold). They do not sync across processes: they score predictions that are already
    gathered."""

    def __init__(self) -> None:
        super().__init__()
        options = {"sync_on_compute": False}
        self.ranking = MetricCollection(
            {"auroc": BinaryAUROC(**options), "average_precision": BinaryAveragePrecision(**options)},
            compute_groups=False,
        )
        self.calibration = MetricCollection(
            {
                "ece": BinaryCalibrationError(n_bins=CALIBRATION_BINS, norm="l1", **options),
                "brier": MeanSquaredError(**options),
            },
            compute_groups=False,
        )
        self.decisions = MetricCollection(
            compute_groups=False,
            metrics={
                "accuracy": BinaryAccuracy(**options),
                "kappa": BinaryCohenKappa(**options),
                "precision": _classwise(MulticlassPrecision, "precision"),
                "recall": _classwise(MulticlassRecall, "recall"),
                "f1": _classwise(MulticlassF1Score, "f1"),
            },
        )
        self.confusion = BinaryConfusionMatrix(**options)

    def score(self, table: PredictionTable, threshold: float | torch.Tensor) -> dict[str, float]:
        """Every metric of `table` at `threshold` (one number, or a tensor with each row's threshold), the
        confusion matrix as four counts; AUROC is NaN when only one class is present."""
        labels = table.labels.long()
        decisions = (table.probs > threshold).long()
        for metric in (self.ranking, self.calibration, self.decisions, self.confusion):
            metric.reset()
        self.ranking.update(table.probs, labels)
        self.calibration["ece"].update(table.probs, labels)
        self.calibration["brier"].update(table.probs, table.labels.float())
        self.decisions.update(decisions, labels)
        computed = {**self.ranking.compute(), **self.calibration.compute(), **self.decisions.compute()}
        values = {name: float(value) for name, value in computed.items()}
        if labels.unique().numel() < 2:
            values["auroc"] = float("nan")
        values["average_precision"] += 0.0  # torchmetrics gives -0.0 when there is no positive
        values["sensitivity"] = values["recall_abnormal"]
        values["specificity"] = values["recall_normal"]
        self.confusion.update(decisions, labels)
        (tn, fp), (fn, tp) = self.confusion.compute().tolist()
        values.update(true_negatives=tn, false_positives=fp, false_negatives=fn, true_positives=tp)
        return values


class StageMetrics(nn.Module):
    """The predictions and scores of one stage (val or test), at image and study level, overall and per body
    part. It collects per-image logits, and for study poolings per-study logits too; `tables` turns them into
    (temperature-scaled) probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.predictions = ImagePredictions()
        self.study_predictions = ImagePredictions(unique_by="studies")
        self.scores = BinaryScores()

    def update(self, logits, labels, studies, body_parts, image_ids) -> None:
        """Add a batch of per-image logits."""
        self.predictions.update(logits, labels, studies, body_parts, image_ids)

    def update_studies(self, logits, labels, studies, body_parts, first_image_ids) -> None:
        """Add a batch of per-study logits (a study pooling's), with each study's first image id."""
        self.study_predictions.update(logits, labels, studies, body_parts, first_image_ids)

    def logits(self, level: str = "image") -> PredictionTable:
        """The gathered per-image (or per-study) table, holding logits where it would hold probabilities."""
        return (self.study_predictions if level == "study" else self.predictions).compute()

    def tables(self, aggregation: str | None, temperature: float = 1.0) -> dict[str, PredictionTable]:
        """The gathered image table, probabilities sigmoid(logit / temperature), and its study table: the mean (or
        max, see `aggregate_studies`) of the image probabilities, or with `aggregation` None the collected study
        logits' probabilities."""
        logits = self.logits()
        images = replace(logits, probs=calibrated_probabilities(logits.probs, temperature))
        if aggregation is not None:
            return {"image": images, "study": images.by_study(aggregation)}
        studies = self.logits("study")
        return {"image": images, "study": replace(studies, probs=calibrated_probabilities(studies.probs, temperature))}

    def score(
        self, stage: str, tables: dict[str, PredictionTable], threshold: float | torch.Tensor
    ) -> dict[str, float]:
        """Metric values named `{stage}/{level}/{metric}` (all body parts together) and
        `{stage}/{level}/{metric}/{body_part}` (each body part present), decided at `threshold`: one number, or
        a tensor with one threshold per BODY_PARTS entry. `{stage}/{level}/threshold/{body_part}` says which
        threshold each part used (and `{stage}/{level}/threshold` the overall one, when there is one)."""
        values = {}
        for level, table in tables.items():
            thresholds = row_thresholds(threshold, table.body_parts)
            for name, value in self.scores.score(table, thresholds).items():
                values[f"{stage}/{level}/{name}"] = value
            if not isinstance(thresholds, torch.Tensor):
                values[f"{stage}/{level}/{THRESHOLD_COLUMN}"] = thresholds
            for part in table.body_parts.unique().tolist():
                mask = table.body_parts == part
                part_threshold = thresholds[mask] if isinstance(thresholds, torch.Tensor) else thresholds
                for name, value in self.scores.score(table.select(mask), part_threshold).items():
                    values[f"{stage}/{level}/{name}/{BODY_PARTS[part]}"] = value
                values[f"{stage}/{level}/{THRESHOLD_COLUMN}/{BODY_PARTS[part]}"] = float(
                    row_thresholds(threshold, torch.tensor([part]))
                )
        return values

    def reset(self) -> None:
        """Forget the collected predictions."""
        self.predictions.reset()
        self.study_predictions.reset()


def metrics_by_body_part(values: dict[str, float], stage: str, level: str) -> pd.DataFrame:
    """Rows: each body part with metrics, then `overall`; columns: the metrics of `{stage}/{level}/...`, their
    bootstrap bounds `{metric}_ci_low`/`_ci_high` where the values hold them, then the threshold each row was
    decided at (empty for `overall` when each part had its own)."""
    prefix = f"{stage}/{level}/"
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if not key.startswith(prefix):
            continue
        name, _, part = key[len(prefix) :].partition("/")
        rows.setdefault(part or "overall", {})[name] = value
    order = [part for part in BODY_PARTS if part in rows] + ["overall"]
    present = {name for row in rows.values() for name in row}
    bounds = [f"{metric}_{bound}" for metric in METRIC_NAMES for bound in ("ci_low", "ci_high")]
    columns = [*METRIC_NAMES, *(name for name in bounds if name in present), THRESHOLD_COLUMN]
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(index=order, columns=columns)
    return table.rename_axis("body_part")
