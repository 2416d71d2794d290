"""The dataset's plan: patients, their studies, splits and labels (one RNG, before any image is drawn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.synthetic.spec import SyntheticDataError, SyntheticSpec

DATASET_DIR = "MURA-v1.1"
SPLITS = ("train", "valid")
PLAN_STREAM = 1  # SeedSequence spawn key of the plan's RNG (the studies' RNGs use render.STUDY_STREAM)
MAX_PATIENT_ID = 99_999


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
    """All studies of the dataset: patients grouped, split by patient, train patients numbered first."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(PLAN_STREAM,)))
    patients = _group_into_patients(rng, spec)
    in_valid = rng.random(len(patients)) < spec.valid_fraction
    if len(patients) > MAX_PATIENT_ID:
        raise SyntheticDataError(f"{len(patients)} patients do not fit 5-digit ids; lower studies_per_part")
    train = [("train", keys) for keys, valid in zip(patients, in_valid, strict=True) if not valid]
    valid = [("valid", keys) for keys, valid in zip(patients, in_valid, strict=True) if valid]
    plans = []
    for patient_id, (split, keys) in enumerate(train + valid, start=1):
        plans.extend(_patient_studies(rng, spec, split, patient_id, keys))
    return plans


def _group_into_patients(rng: np.random.Generator, spec: SyntheticSpec) -> list[list[tuple[int, int]]]:
    """Deal the studies_per_part studies of every body part out to patients of 1, 2, 3... studies."""
    remaining = np.full(len(BODY_PARTS), spec.studies_per_part)
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
            keys.append((part, spec.studies_per_part - int(remaining[part])))
            remaining[part] -= 1
        patients.append(keys)
    return patients


def _draw_part(rng: np.random.Generator, remaining: np.ndarray) -> int:
    return int(rng.choice(len(remaining), p=remaining / remaining.sum()))


def _patient_studies(rng, spec, split, patient_id, keys) -> list[StudyPlan]:
    """A patient's studies, numbered 1, 2, ... per body part, each with a label and an image count."""
    numbers: dict[int, int] = {}
    plans = []
    for key in keys:
        numbers[key[0]] = numbers.get(key[0], 0) + 1
        plans.append(
            StudyPlan(
                split=split,
                part=BODY_PARTS[key[0]],
                patient=patient_id,
                number=numbers[key[0]],
                label=int(rng.random() < spec.abnormal_fraction),
                images=int(rng.integers(spec.images_per_study[0], spec.images_per_study[1] + 1)),
                key=key,
            )
        )
    return plans
