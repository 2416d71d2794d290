"""The dataset's plan: patients, their studies, splits and labels (one RNG, before any image is drawn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.synthetic.spec import MIN_STUDIES_PER_PART, SyntheticDataError, SyntheticSpec

DATASET_DIR = "MURA-v1.1"
SPLITS = ("train", "valid")
PLAN_STREAM = 1  # SeedSequence spawn key of the plan's RNG (the studies' RNGs use render.STUDY_STREAM)
MAX_PATIENT_ID = 99_999
MIN_PER_LABEL = MIN_STUDIES_PER_PART // 2  # studies of each label per body part: one train, one valid


@dataclass(frozen=True)
class StudyPlan:
    """One study to render: where it goes, its label, its image count and its RNG key."""

    split: str
    part: str
    patient: int
    number: int
    label: int
    images: int
    key: tuple[int, int]  # (body part index, index of the study within its body part)

    @property
    def folder(self) -> str:
        """The study path as in the official CSVs, ending in '/'."""
        suffix = "positive" if self.label else "negative"
        patient = f"patient{self.patient:05d}"
        return f"{DATASET_DIR}/{self.split}/XR_{self.part.upper()}/{patient}/study{self.number}_{suffix}/"


def plan_studies(spec: SyntheticSpec) -> list[StudyPlan]:
    """All studies of the dataset: labels and splits stratified per body part and label, so every body part
    has train and valid studies of both labels; patients grouped within each split (train and valid patients
    are disjoint), train patients numbered first."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(PLAN_STREAM,)))
    labels = _draw_labels(rng, spec)
    in_valid = _draw_valid(rng, spec, labels)
    patients = [
        (split, keys)
        for split, valid in zip(SPLITS, (False, True), strict=True)
        for keys in _group_into_patients(rng, spec, [np.flatnonzero(row == valid).tolist() for row in in_valid])
    ]
    if len(patients) > MAX_PATIENT_ID:
        raise SyntheticDataError(f"{len(patients)} patients do not fit 5-digit ids; lower studies_per_part")
    plans = []
    for patient_id, (split, keys) in enumerate(patients, start=1):
        plans.extend(_patient_studies(rng, spec, split, patient_id, keys, labels))
    return plans


def _share(count: int, fraction: float, keep: int) -> int:
    """`fraction` of `count`, rounded, leaving at least `keep` on either side."""
    return min(max(round(fraction * count), keep), count - keep)


def _draw_labels(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Labels (body part x study): abnormal_fraction of each body part's studies, at least two of each label
    (one for train, one for valid)."""
    n = spec.studies_per_part
    abnormal = _share(n, spec.abnormal_fraction, keep=MIN_PER_LABEL)
    labels = np.zeros((len(BODY_PARTS), n), np.int64)
    for row in labels:
        row[rng.permutation(n)[:abnormal]] = 1
    return labels


def _draw_valid(rng: np.random.Generator, spec: SyntheticSpec, labels: np.ndarray) -> np.ndarray:
    """Valid studies (body part x study): valid_fraction of each body part's normal and of its abnormal
    studies, at least one of each and never all."""
    in_valid = np.zeros(labels.shape, bool)
    for part, row in enumerate(labels):
        for label in (0, 1):
            studies = rng.permutation(np.flatnonzero(row == label))
            in_valid[part, studies[: _share(len(studies), spec.valid_fraction, keep=1)]] = True
    return in_valid


def _group_into_patients(
    rng: np.random.Generator, spec: SyntheticSpec, pool: list[list[int]]
) -> list[list[tuple[int, int]]]:
    """Deal the studies of `pool` (per body part, the study indices) out to patients of 1, 2, 3... studies."""
    queues = [list(indices) for indices in pool]
    remaining = np.array([len(queue) for queue in queues])
    patients = []
    while remaining.sum():
        count = 1 + rng.choice(len(spec.studies_per_patient_probs), p=spec.studies_per_patient_probs)
        part = _draw_part(rng, remaining)
        keys = []
        for _ in range(count):
            if not remaining.sum():
                break
            if keys and not (remaining[part] and rng.random() < spec.same_part_prob):
                part = _draw_part(rng, remaining)
            keys.append((part, queues[part].pop(0)))
            remaining[part] -= 1
        patients.append(keys)
    return patients


def _draw_part(rng: np.random.Generator, remaining: np.ndarray) -> int:
    return int(rng.choice(len(remaining), p=remaining / remaining.sum()))


def _patient_studies(rng, spec, split, patient_id, keys, labels) -> list[StudyPlan]:
    """A patient's studies, numbered 1, 2, ... per body part, each with its label and an image count."""
    numbers: dict[int, int] = {}
    plans = []
    for part, index in keys:
        numbers[part] = numbers.get(part, 0) + 1
        plans.append(
            StudyPlan(
                split=split,
                part=BODY_PARTS[part],
                patient=patient_id,
                number=numbers[part],
                label=int(labels[part, index]),
                images=int(rng.integers(spec.images_per_study[0], spec.images_per_study[1] + 1)),
                key=(part, index),
            )
        )
    return plans
