"""Synthetic MURA-v1.1: radiograph-like PNGs in the official layout, with lesion boxes for localisation.

`python -m mura_lightning.data.synthetic root=DIR studies_per_part=N seed=S` (every key of
conf/synthetic.yaml can be overridden) writes

    DIR/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageI.png
    DIR/MURA-v1.1/{train,valid}_image_paths.csv, {train,valid}_labeled_studies.csv  (headerless, as MURA)
    DIR/lesions.csv  (path,kind,x0,y0,x1,y1: one row per lesion, box in pixels, x1/y1 exclusive)

Each image is a bone layout of its body part (hollow-tube bones with bright cortex, trabecular texture,
soft-tissue haze) seen from a random view, exposed with random gain/gamma, blurred and noised, sometimes
with a bright L/R marker. An abnormal study has one lesion kind - fracture (dark jagged gap, displaced and
angulated fragment, at times a callus), hardware (metal plate with screws) or lytic spot (dark oval with a
sclerotic rim) - on one to three bones of most of its images; normal studies have none. Lesion sizes are
fractions of the image's long side, so they stay visible after resizing to 128 px. The same seed gives
the same bytes in every file, however many workers render.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from scipy.ndimage import gaussian_filter

from mura_lightning.errors import MuraError, exit_on_user_error

CONFIG_PATH = Path(__file__).resolve().parents[2] / "conf" / "synthetic.yaml"
DATASET_DIR = "MURA-v1.1"
LESIONS_FILE = "lesions.csv"
LESIONS_HEADER = "path,kind,x0,y0,x1,y1"
SPLITS = ("train", "valid")
BODY_PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
LESION_KINDS = ("fracture", "hardware", "lytic")
SWELLING_KINDS = ("fracture", "lytic")  # lesion kinds that may come with soft-tissue swelling
STUDY_STREAM, PLAN_STREAM = 0, 1  # SeedSequence spawn keys: (STUDY_STREAM, part, study) and (PLAN_STREAM,)
MAX_PATIENT_ID = 99_999
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAYSCALE, PNG_FILTER_UP = 0, 2  # IHDR colour type and per-row filter type

FLARE_WIDTH = 0.12  # width of the widened bone ends, as a fraction of the bone length
PROFILE_EPS = 0.05  # bone density below which a pixel counts as off the bone
VIEW_TRIES = 20  # views drawn until one shows a lesion site inside the frame
SITE_TRIES = 6  # positions tried along one host bone
LYTIC_RIM_WIDTH = 0.5  # sclerotic rim of a lytic spot, as a fraction of its half-width
FRACTURE_REACH = 2.2  # callus and fragments stay within this many bone radii of the break
PLATE_MAX_BONE_FRACTION = 1.0  # a plate is at most as wide as its bone
SITE_MARGIN = 0.08  # a lesion site keeps this fraction of the short side from the image border

MARKER_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}
TRIANGULAR_NOISE_SCALE = math.sqrt(6.0)  # makes the difference of two U(0, 1) draws unit-variance
MARKER_LETTER_LEVEL = 0.35  # the letter's brightness relative to its block


class SyntheticDataError(MuraError):
    """Bad generator settings, or a synthetic tree already in the way."""


Range = tuple[float, float]


@dataclass
class SyntheticSpec:
    """Every generator knob; the defaults live in conf/synthetic.yaml (see there for their meaning)."""

    root: str = MISSING
    studies_per_part: int = MISSING
    seed: int = MISSING
    num_workers: int | None = MISSING
    png_compress_level: int = MISSING
    valid_fraction: float = MISSING
    abnormal_fraction: float = MISSING
    studies_per_patient_probs: list[float] = MISSING
    same_part_prob: float = MISSING
    images_per_study: tuple[int, int] = MISSING
    min_side: int = MISSING
    max_side: int = MISSING
    min_aspect: float = MISSING
    landscape_prob: float = MISSING
    scale: Range = MISSING
    shift: float = MISSING
    rotation_deg: float = MISSING
    size_jitter: Range = MISSING
    tissue_density: Range = MISSING
    texture_cell: Range = MISSING
    texture_amplitude: Range = MISSING
    attenuation: Range = MISSING
    gain: Range = MISSING
    offset: Range = MISSING
    gamma: Range = MISSING
    gradient: float = MISSING
    blur_sigma: Range = MISSING
    render_max_side: int = MISSING
    noise_std: Range = MISSING
    marker_prob: float = MISSING
    marker_size: Range = MISSING
    marker_level: Range = MISSING
    lesion_image_prob: float = MISSING
    lesions_per_image: tuple[int, int] = MISSING
    lesion_kind_weights: dict[str, float] = MISSING
    lesion_site: Range = MISSING
    swelling_prob: float = MISSING
    swelling_density: Range = MISSING
    fracture_gap: Range = MISSING
    fracture_contrast: Range = MISSING
    fracture_shift: Range = MISSING
    fracture_tilt_deg: float = MISSING
    fracture_angulation_deg: Range = MISSING
    fracture_callus_prob: float = MISSING
    fracture_fragments: tuple[int, int] = MISSING
    fracture_min_extent: float = MISSING
    fracture_callus_density: Range = MISSING
    plate_width: Range = MISSING
    plate_length: Range = MISSING
    plate_density: Range = MISSING
    screws: tuple[int, int] = MISSING
    lytic_diameter: Range = MISSING
    lytic_contrast: Range = MISSING
    lytic_max_bone_fraction: float = MISSING
    lytic_elongation: Range = MISSING
    lytic_rim_density: Range = MISSING


def load_spec(**overrides: Any) -> SyntheticSpec:
    """The generator settings: conf/synthetic.yaml's values with `overrides` on top, type-checked."""
    defaults = OmegaConf.load(CONFIG_PATH)
    for key in ("defaults", "hydra"):
        defaults.pop(key, None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SyntheticSpec), defaults, overrides)
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # its message names the key; say where the knobs are documented
        raise SyntheticDataError(f"bad synthetic MURA setting ({err}); the knobs are in {CONFIG_PATH}") from err
    _validate(spec)
    return spec


def _validate(spec: SyntheticSpec) -> None:
    problems = []
    if spec.studies_per_part < 1:
        problems.append(f"studies_per_part={spec.studies_per_part} must be at least 1")
    if not 0 <= spec.valid_fraction < 1 or not 0 <= spec.abnormal_fraction <= 1:
        problems.append("valid_fraction must be in [0, 1) and abnormal_fraction in [0, 1]")
    if not 0 < spec.min_side <= spec.max_side:
        problems.append(f"need 0 < min_side <= max_side, got {spec.min_side} and {spec.max_side}")
    if not math.isclose(sum(spec.studies_per_patient_probs), 1.0):
        problems.append(f"studies_per_patient_probs={spec.studies_per_patient_probs} must sum to 1")
    unknown = set(spec.lesion_kind_weights) - set(LESION_KINDS)
    if unknown or sum(spec.lesion_kind_weights.values()) <= 0:
        problems.append(f"lesion_kind_weights needs positive weights over {', '.join(LESION_KINDS)}")
    for name, value in vars(spec).items():
        is_range = isinstance(value, (list, tuple)) and name != "studies_per_patient_probs"
        if is_range and (len(value) != 2 or value[0] > value[1]):
            problems.append(f"{name}={list(value)} must be a [low, high] pair")
    if spec.images_per_study[0] < 1 or spec.lesions_per_image[0] < 1:
        problems.append("images_per_study and lesions_per_image must start at 1 or more")
    if problems:
        raise SyntheticDataError("; ".join(problems) + f" (defaults and meanings: {CONFIG_PATH})")


# ----------------------------------------------------------------------------------------------------
# Planning: patients, studies, splits and labels (one RNG, before any image is drawn)


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


# ----------------------------------------------------------------------------------------------------
# Anatomy: bones as tapered capsules in a canonical frame (long axis vertical, about [-0.5, 0.5] square)


@dataclass(frozen=True)
class Bone:
    """A bone: a capsule from p0 to p1 with radius r0 -> r1, widened ends, a cortex shell and a medulla."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float
    flare0: float = 0.0
    flare1: float = 0.0
    cortex: float = 0.25  # cortex thickness as a fraction of the radius
    medulla: float = 0.15  # medulla density relative to the cortex
    density: float = 1.0
    host: bool = False  # long bone that may carry a lesion


@dataclass(frozen=True)
class Tissue:
    """Soft tissue: a capsule of uniform density around bones."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    r: float


@dataclass(frozen=True)
class Anatomy:
    """The bones and soft tissue of one view."""

    bones: list[Bone]
    tissues: list[Tissue]


def _blob(center: tuple[float, float], r: float, elongation: float = 0.0, angle: float = 0.0, **kw) -> Bone:
    """A roundish bone (carpal, head, glenoid): a short capsule of length `elongation` at `angle`."""
    dx, dy = 0.5 * elongation * math.cos(angle), 0.5 * elongation * math.sin(angle)
    return Bone((center[0] - dx, center[1] - dy), (center[0] + dx, center[1] + dy), r, r, **kw)


def _polar(origin: tuple[float, float], angle: float, length: float) -> tuple[float, float]:
    """The point `length` away from `origin`, `angle` radians from straight up (clockwise)."""
    return origin[0] + length * math.sin(angle), origin[1] - length * math.cos(angle)


def _chain(rng, start, angle, lengths, radii, bend, gap, host_count) -> tuple[list[Bone], tuple[float, float]]:
    """Bones end to end from `start` upwards along `angle`, each bending a little; returns them and the tip."""
    bones, point = [], start
    for i, (length, radius) in enumerate(zip(lengths, radii, strict=True)):
        angle += rng.normal(0.0, bend)
        end = _polar(point, angle, length)
        bones.append(Bone(point, end, radius, 0.85 * radius, flare0=0.35, flare1=0.3, host=i < host_count))
        point = _polar(end, angle, gap)
    return bones, point


def _humerus(rng: np.random.Generator) -> Anatomy:
    """One long shaft with a rounded head on top and the condyles below."""
    head = rng.uniform(0.11, 0.13)
    bones = [
        Bone((0.0, -0.30), (0.0, 0.36), 0.058, 0.05, flare0=0.4, flare1=0.9, host=True),
        _blob((0.03, -0.37), head, cortex=0.12, medulla=0.5),
        _blob((0.0, 0.42), 0.045, elongation=0.2, cortex=0.2),
    ]
    return Anatomy(bones, [Tissue((0.0, -0.6), (0.0, 0.6), rng.uniform(0.22, 0.27))])


def _forearm(rng: np.random.Generator) -> Anatomy:
    """Radius and ulna: two parallel shafts, the radius widening at the wrist."""
    spread = rng.uniform(0.055, 0.075)
    bones = [
        Bone((-spread, -0.48), (-spread - 0.02, 0.48), 0.04, 0.042, flare0=0.3, flare1=0.8, host=True),
        Bone((spread, -0.48), (spread - 0.01, 0.48), 0.04, 0.033, flare0=0.6, flare1=0.3, host=True),
    ]
    return Anatomy(bones, [Tissue((0.0, -0.6), (0.0, 0.6), rng.uniform(0.19, 0.23))])


def _finger(rng: np.random.Generator) -> Anatomy:
    """A chain of phalanges under the head of a metacarpal."""
    scale = rng.uniform(0.9, 1.1)
    bones = [Bone((0.0, 0.62), (0.0, 0.47), 0.065 * scale, 0.065 * scale, flare1=0.4)]
    lengths = [0.33 * scale, 0.22 * scale, 0.15 * scale]
    radii = [0.06 * scale, 0.052 * scale, 0.045 * scale]
    phalanges, tip = _chain(rng, (0.0, 0.42), 0.0, lengths, radii, 0.12, 0.05, host_count=2)
    tissue = Tissue((0.0, 0.6), tip, 0.15 * scale)
    return Anatomy(bones + phalanges, [tissue])


HAND_RAYS = (  # per ray: metacarpal base x, angle (rad), metacarpal length, phalanx lengths
    (-0.14, -0.75, 0.15, (0.12, 0.09)),
    (-0.06, -0.22, 0.24, (0.14, 0.09, 0.06)),
    (0.0, -0.05, 0.25, (0.15, 0.1, 0.065)),
    (0.06, 0.1, 0.23, (0.14, 0.09, 0.06)),
    (0.11, 0.25, 0.2, (0.11, 0.07, 0.055)),
)


def _hand(rng: np.random.Generator) -> Anatomy:
    """Carpals, five metacarpals and the fingers fanning out, with the distal radius and ulna below."""
    bones, tissues = [], [Tissue((0.0, -0.15), (0.0, 0.15), 0.19), Tissue((0.0, 0.15), (0.0, 0.6), 0.16)]
    for base_x, angle, metacarpal, phalanges in HAND_RAYS:
        spread = angle * rng.uniform(0.8, 1.2)
        lengths = (metacarpal, *phalanges)
        radii = [0.03] + [0.024 - 0.003 * i for i in range(len(phalanges))]
        ray, tip = _chain(rng, (base_x, 0.07), spread, lengths, radii, 0.05, 0.018, host_count=1)
        bones += ray
        tissues.append(Tissue(ray[1].p0, tip, 0.04))
    bones += [_blob((x, y), 0.032, 0.02, rng.uniform(0, math.pi)) for x, y in _carpal_grid(0.055, (0.0, 0.15))]
    bones += [
        Bone((-0.06, 0.6), (-0.05, 0.27), 0.05, 0.05, flare1=0.6, host=True),
        Bone((0.09, 0.6), (0.09, 0.29), 0.03, 0.03, flare1=0.4),
    ]
    return Anatomy(bones, tissues)


def _carpal_grid(step: float, center: tuple[float, float]) -> list[tuple[float, float]]:
    """Centres of the eight carpals: two rows of four."""
    return [
        (center[0] + step * (i - 1.5), center[1] + row * step * 1.1 + step * 0.1 * (i % 2))
        for row in (-0.5, 0.5)
        for i in range(4)
    ]


def _wrist(rng: np.random.Generator) -> Anatomy:
    """Carpal cluster of small blobs between the metacarpal bases and the distal radius and ulna."""
    bones = [
        _blob((x + rng.normal(0, 0.008), y + rng.normal(0, 0.008)), rng.uniform(0.048, 0.062), 0.03, rng.uniform(0, 3))
        for x, y in _carpal_grid(0.1, (0.0, 0.0))
    ]
    bones += [
        Bone((-0.07, 0.62), (-0.06, 0.17), 0.08, 0.085, flare1=0.5, host=True),
        Bone((0.14, 0.62), (0.13, 0.19), 0.045, 0.045, flare1=0.3, host=True),
    ]
    for i, x in enumerate((-0.2, -0.1, 0.0, 0.1, 0.19)):
        angle = (i - 2) * rng.uniform(0.06, 0.12)
        start = (x, -0.14)
        bones.append(Bone(start, _polar(start, angle, 0.5), 0.038, 0.032, flare0=0.4, host=True))
    return Anatomy(bones, [Tissue((0.0, -0.6), (0.0, 0.6), rng.uniform(0.3, 0.34))])


def _elbow(rng: np.random.Generator) -> Anatomy:
    """Distal humerus meeting radius and ulna at a flexion angle, with the olecranon behind the joint."""
    flexion = rng.uniform(0.0, 0.9)
    bones = [
        Bone((0.0, -0.6), (0.0, -0.1), 0.068, 0.075, flare1=0.8, host=True),
        _blob((0.0, -0.05), 0.055, elongation=0.2, cortex=0.2),
    ]
    forearm = [
        Bone((-0.06, 0.06), (-0.08, 0.65), 0.042, 0.038, flare0=0.4, host=True),
        Bone((0.05, 0.03), (0.05, 0.65), 0.048, 0.034, flare0=0.5, host=True),
        _blob((0.07, -0.03), 0.05, cortex=0.2),
    ]
    bones += [_rotate_bone(bone, flexion) for bone in forearm]
    tissues = [Tissue((0.0, -0.65), (0.0, 0.0), 0.22), Tissue((0.0, 0.0), _rotate((0.0, 0.65), flexion), 0.19)]
    return Anatomy(bones, tissues)


def _shoulder(rng: np.random.Generator) -> Anatomy:
    """Humeral head and shaft, glenoid and scapula, acromion and clavicle."""
    head = rng.uniform(0.14, 0.17)
    bones = [
        _blob((0.08, -0.02), head, cortex=0.1, medulla=0.5),
        Bone((0.12, 0.12), (0.17, 0.65), 0.08, 0.07, flare0=0.3, host=True),
        _blob((-0.12, 0.02), 0.05, elongation=0.08, angle=math.pi / 2, cortex=0.25),
        Bone((-0.17, 0.04), (-0.3, 0.12), 0.06, 0.06, density=0.7),
        Bone((-0.27, -0.02), (-0.36, 0.6), 0.12, 0.08, cortex=0.15, density=0.45),
        Bone((-0.08, -0.22), (0.13, -0.23), 0.035, 0.03, flare1=0.4),
        Bone((-0.55, -0.36), (0.0, -0.28), 0.038, 0.034, flare0=0.3, flare1=0.5, host=True),
        _blob((-0.06, -0.1), 0.028),
    ]
    return Anatomy(bones, [Tissue((-0.15, -0.25), (0.1, 0.65), rng.uniform(0.38, 0.44))])


ANATOMY_BUILDERS: dict[str, Callable[[np.random.Generator], Anatomy]] = {
    "elbow": _elbow,
    "finger": _finger,
    "forearm": _forearm,
    "hand": _hand,
    "humerus": _humerus,
    "shoulder": _shoulder,
    "wrist": _wrist,
}


def _rotate(point: tuple[float, float], angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return c * point[0] - s * point[1], s * point[0] + c * point[1]


def _rotate_bone(bone: Bone, angle: float) -> Bone:
    return replace(bone, p0=_rotate(bone.p0, angle), p1=_rotate(bone.p1, angle))


# ----------------------------------------------------------------------------------------------------
# View: image size and the similarity transform from the canonical frame to pixels


@dataclass(frozen=True)
class View:
    """Image size, the render grid (the image shrunk by `factor`, upsampled at the end) and the
    canonical-to-grid transform p -> matrix @ p + offset (`scale` grid pixels per canonical unit)."""

    height: int
    width: int
    factor: float
    matrix: np.ndarray
    offset: np.ndarray
    scale: float

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(height, width) of the render grid."""
        return math.ceil(self.height / self.factor), math.ceil(self.width / self.factor)

    def point(self, p: tuple[float, float]) -> tuple[float, float]:
        """A canonical point in grid coordinates (x to the right, y down)."""
        x, y = self.matrix @ np.asarray(p) + self.offset
        return float(x), float(y)

    def image_box(self, box: Box) -> Box:
        """A grid box in image pixels, grown to whole pixels and clipped to the image."""
        x0, y0, x1, y1 = box
        f = self.factor
        return (
            math.floor(x0 * f),
            math.floor(y0 * f),
            min(self.width, math.ceil(x1 * f)),
            min(self.height, math.ceil(y1 * f)),
        )


def _random_view(rng: np.random.Generator, spec: SyntheticSpec) -> View:
    """A random image size (long side, aspect, orientation) and a rotated, mirrored, shifted placement."""
    long_side = int(rng.integers(spec.min_side, spec.max_side + 1))
    short_side = max(spec.min_side, round(long_side * rng.uniform(spec.min_aspect, 1.0)))
    landscape = rng.random() < spec.landscape_prob
    height, width = (short_side, long_side) if landscape else (long_side, short_side)
    angle = math.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg)) + (math.pi / 2 if landscape else 0.0)
    factor = max(1.0, long_side / spec.render_max_side)
    scale = rng.uniform(*spec.scale) * math.sqrt(height * width) / factor
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    c, s = math.cos(angle), math.sin(angle)
    matrix = scale * np.array([[c * mirror, -s], [s * mirror, c]])
    offset = np.array([width, height]) / factor * (0.5 + rng.uniform(-spec.shift, spec.shift, size=2))
    return View(height, width, factor, matrix, offset, scale)


def _place(anatomy: Anatomy, view: View, rng: np.random.Generator, spec: SyntheticSpec) -> Anatomy:
    """The anatomy in grid coordinates, every bone and tissue thickness scaled by one random factor."""
    size = rng.uniform(*spec.size_jitter)
    bones = [
        replace(b, p0=view.point(b.p0), p1=view.point(b.p1), r0=b.r0 * view.scale * size, r1=b.r1 * view.scale * size)
        for b in anatomy.bones
    ]
    tissues = [replace(t, p0=view.point(t.p0), p1=view.point(t.p1), r=t.r * view.scale * size) for t in anatomy.tissues]
    return Anatomy(bones, tissues)


# ----------------------------------------------------------------------------------------------------
# Rendering: an attenuation field (tissue + bone + metal), then exposure, blur, noise and a side marker


@dataclass(frozen=True)
class Region:
    """A pixel box of the image with the coordinates of its pixel centres, ready to broadcast."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def xs(self) -> np.ndarray:
        """Pixel-centre x coordinates, shape (1, width)."""
        return np.arange(self.x0, self.x1, dtype=np.float32)[None, :] + 0.5

    @property
    def ys(self) -> np.ndarray:
        """Pixel-centre y coordinates, shape (height, 1)."""
        return np.arange(self.y0, self.y1, dtype=np.float32)[:, None] + 0.5

    @property
    def empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.y1 <= self.y0 or self.x1 <= self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index of the box in the image array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _region(points: Sequence[tuple[float, float]], margin: float, height: int, width: int) -> Region:
    """The box around `points` grown by `margin` pixels, clipped to the image."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Region(
        max(0, math.floor(min(ys) - margin)),
        min(height, math.ceil(max(ys) + margin) + 1),
        max(0, math.floor(min(xs) - margin)),
        min(width, math.ceil(max(xs) + margin) + 1),
    )


def _axis_frame(xs, ys, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: position along the segment p0 -> p1 (t in [0, 1]) and distance to the segment."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    rx, ry = xs - p0[0], ys - p0[1]
    t = np.clip((rx * vx + ry * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    dx, dy = rx - t * vx, ry - t * vy
    return t, np.sqrt(dx * dx + dy * dy)


def _bone_radius(bone: Bone, t):
    """The bone's radius at position t along its axis, widened towards the ends."""
    base = bone.r0 + (bone.r1 - bone.r0) * t
    flare = bone.flare0 * np.exp(-((t / FLARE_WIDTH) ** 2)) + bone.flare1 * np.exp(-(((1 - t) / FLARE_WIDTH) ** 2))
    return base * (1.0 + flare)


def _bone_profile(bone: Bone, xs, ys) -> np.ndarray:
    """Projected density of a hollow bone: a bright cortex shell around a darker medulla."""
    t, d = _axis_frame(xs, ys, bone.p0, bone.p1)
    u = d / _bone_radius(bone, t)
    inner = 1.0 - bone.cortex
    outer_chord = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    inner_chord = np.sqrt(np.clip(inner * inner - u * u, 0.0, None))
    return (bone.density * (outer_chord - (1.0 - bone.medulla) * inner_chord)).astype(np.float32)


def _bone_region(bone: Bone, height: int, width: int, margin: float = 0.0) -> Region:
    reach = max(bone.r0 * (1 + bone.flare0), bone.r1 * (1 + bone.flare1)) + margin + 1.0
    return _region([bone.p0, bone.p1], reach, height, width)


def _tissue_layer(tissues: list[Tissue], density: float, height: int, width: int) -> np.ndarray:
    """Soft tissue: the union (max) of rounded capsules, thickest along their axes."""
    layer = np.zeros((height, width), np.float32)
    for tissue in tissues:
        region = _region([tissue.p0, tissue.p1], tissue.r + 1.0, height, width)
        if region.empty:
            continue
        _, d = _axis_frame(region.xs, region.ys, tissue.p0, tissue.p1)
        profile = density * np.sqrt(np.clip(1.0 - (d / tissue.r) ** 2, 0.0, None))
        np.maximum(layer[region.slices], profile, out=layer[region.slices])
    return layer


def _add_bones(field: np.ndarray, bones: list[Bone]) -> None:
    """Add each bone's projected density to the field (overlapping bones add up, as on film)."""
    height, width = field.shape
    for bone in bones:
        region = _bone_region(bone, height, width)
        if not region.empty:
            field[region.slices] += _bone_profile(bone, region.xs, region.ys)


# ----------------------------------------------------------------------------------------------------
# Lesions: each modifies the host bone (or adds metal on it) and returns its pixel box


@dataclass(frozen=True)
class Site:
    """Where a lesion goes: the host bone and the position along its axis."""

    bone: Bone
    t: float

    @property
    def point(self) -> np.ndarray:
        """The site on the bone's axis, in pixels."""
        return np.asarray(self.bone.p0) + self.t * self.axis_vector

    @property
    def axis_vector(self) -> np.ndarray:
        """p1 - p0 of the host bone."""
        return np.asarray(self.bone.p1) - np.asarray(self.bone.p0)

    @property
    def axis(self) -> np.ndarray:
        """Unit vector along the host bone."""
        v = self.axis_vector
        return v / max(float(np.hypot(*v)), 1e-9)

    @property
    def normal(self) -> np.ndarray:
        """Unit vector across the host bone."""
        return np.array([-self.axis[1], self.axis[0]])

    @property
    def radius(self) -> float:
        """The host bone's radius at the site."""
        return float(_bone_radius(self.bone, self.t))


Box = tuple[int, int, int, int]


def _pick_sites(rng: np.random.Generator, bones: list[Bone], view: View, spec: SyntheticSpec, count: int) -> list[Site]:
    """Up to `count` lesion sites, each on its own host bone and well inside the frame."""
    height, width = view.grid_shape
    margin = SITE_MARGIN * min(height, width)
    sites = []
    for index in rng.permutation(len(bones)):
        if not bones[index].host or len(sites) == count:
            continue
        for _ in range(SITE_TRIES):
            site = Site(bones[index], float(rng.uniform(*spec.lesion_site)))
            x, y = site.point
            if margin <= x <= width - margin and margin <= y <= height - margin:
                sites.append(site)
                break
    return sites


def _mask_box(mask: np.ndarray, region: Region) -> Box | None:
    """The pixel box (x0, y0, x1, y1; x1, y1 exclusive) of a boolean mask inside `region`."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return (
        region.x0 + int(cols.min()),
        region.y0 + int(rows.min()),
        region.x0 + int(cols.max()) + 1,
        region.y0 + int(rows.max()) + 1,
    )


def _soft_inside(distance_inside: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance to an edge (positive inside), about one pixel wide."""
    return np.clip(distance_inside + 0.5, 0.0, 1.0)


def _fracture(field, site: Site, rng, spec, size: float) -> Box | None:
    """A dark, jagged gap across the host bone; the far fragment shifted sideways and angulated, dense bone
    chips around the break and at times a bright healing callus. Chips and callus scale with the bone, but
    no smaller than for a bone of radius fracture_min_extent * size."""
    bone = site.bone
    extent = max(site.radius, spec.fracture_min_extent * size)
    gap = rng.uniform(*spec.fracture_gap) * size
    shift = rng.uniform(*spec.fracture_shift) * size * rng.choice((-1.0, 1.0)) * site.normal
    bend = math.radians(rng.uniform(*spec.fracture_angulation_deg)) * rng.choice((-1.0, 1.0))
    reach = float(np.hypot(*shift)) + abs(math.sin(bend)) * float(np.hypot(*site.axis_vector))
    region = _bone_region(bone, *field.shape, margin=max(reach, FRACTURE_REACH * extent))
    xs, ys = region.xs, region.ys
    tilt = math.radians(rng.uniform(-spec.fracture_tilt_deg, spec.fracture_tilt_deg))
    across = np.array(_rotate(tuple(site.axis), tilt))
    along = np.array([-across[1], across[0]])
    px, py = site.point
    wave = 2 * math.pi / (rng.uniform(1.0, 2.5) * site.radius)
    jag = 0.25 * gap * np.sin(wave * ((xs - px) * along[0] + (ys - py) * along[1]) + rng.uniform(0, 2 * math.pi))
    signed = (xs - px) * across[0] + (ys - py) * across[1] + jag
    cos_b, sin_b = math.cos(bend), math.sin(bend)
    far_x, far_y = xs - shift[0] - px, ys - shift[1] - py
    far = _bone_profile(bone, px + cos_b * far_x + sin_b * far_y, py - sin_b * far_x + cos_b * far_y)
    profile = np.where(signed > 0, far, _bone_profile(bone, xs, ys))
    gap_mask = _soft_inside(gap / 2 - np.abs(signed))
    field[region.slices] += profile * (1.0 - rng.uniform(*spec.fracture_contrast) * gap_mask)
    lesion = (gap_mask > 0.5) & (profile > PROFILE_EPS)
    extra = _fragments(xs, ys, site, extent, rng, spec)
    if rng.random() < spec.fracture_callus_prob:
        extra = extra + _callus(xs, ys, site, extent, rng, spec) * (1.0 - gap_mask)
    field[region.slices] += extra
    return _mask_box(lesion | (extra > PROFILE_EPS), region)


def _fragments(xs, ys, site: Site, extent: float, rng, spec) -> np.ndarray:
    """Small dense bone chips scattered within a few `extent`s of the break (a comminuted fracture)."""
    chips = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), np.float32)
    for _ in range(int(rng.integers(spec.fracture_fragments[0], spec.fracture_fragments[1] + 1))):
        radius = rng.uniform(0.3, 0.5) * extent
        offset = rng.uniform(-1.2, 1.2) * site.axis + rng.uniform(-1.6, 1.6) * site.normal
        cx, cy = site.point + offset * extent
        distance = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        chips += rng.uniform(1.0, 1.5) * np.sqrt(np.clip(1.0 - (distance / radius) ** 2, 0.0, None))
    return chips


def _callus(xs, ys, site: Site, extent: float, rng, spec) -> np.ndarray:
    """A healing callus: a spindle of new bone around the fracture site, wider than the bone (the caller
    keeps the fracture line clear of it)."""
    along = rng.uniform(2.5, 3.5) * extent
    across = rng.uniform(1.6, 2.1) * extent
    px, py = site.point
    u = ((xs - px) * site.axis[0] + (ys - py) * site.axis[1]) / along
    v = ((xs - px) * site.normal[0] + (ys - py) * site.normal[1]) / across
    return rng.uniform(*spec.fracture_callus_density) * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))


def _lytic(field, site: Site, rng, spec, size: float) -> Box | None:
    """A dark oval spot inside the host bone with a bright (sclerotic) rim, no wider than the bone,
    possibly stretched along it."""
    bone = site.bone
    diameter = rng.uniform(*spec.lytic_diameter) * size
    across = min(diameter, 2 * spec.lytic_max_bone_fraction * site.radius) / 2
    along = max(across, diameter / 2 * rng.uniform(*spec.lytic_elongation))
    cx, cy = site.point + site.normal * rng.uniform(-0.3, 0.3) * (site.radius - across)
    angle = math.atan2(site.axis[1], site.axis[0]) + rng.uniform(-0.3, 0.3)
    region = _bone_region(bone, *field.shape)
    xs, ys = region.xs, region.ys
    u = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / along
    v = (-(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)) / across
    rho = np.sqrt(u * u + v * v)
    spot = _soft_inside((1.0 - rho) * across)
    rim = _soft_inside((1.0 + LYTIC_RIM_WIDTH - rho) * across) - spot
    profile = _bone_profile(bone, xs, ys)
    on_bone = profile > PROFILE_EPS
    sclerosis = rng.uniform(*spec.lytic_rim_density) * rim * on_bone
    field[region.slices] += profile * (1.0 - rng.uniform(*spec.lytic_contrast) * spot) + sclerosis
    return _mask_box((spot > 0.5) & on_bone, region)


def _hardware(field, site: Site, rng, spec, size: float) -> Box | None:
    """A bright metal plate along the host bone's cortex, held by screws across the bone."""
    bone = site.bone
    _add_bones(field, [bone])
    width = min(rng.uniform(*spec.plate_width) * size, 2 * PLATE_MAX_BONE_FRACTION * site.radius)
    bone_length = float(np.hypot(*site.axis_vector))
    half = 0.5 * rng.uniform(*spec.plate_length) * bone_length
    side = rng.choice((-1.0, 1.0)) * site.normal
    lateral = side * site.radius * rng.uniform(0.5, 0.8)
    ends = [tuple(site.point + lateral + k * half * site.axis) for k in (-1.0, 1.0)]
    screw_count = int(rng.integers(spec.screws[0], spec.screws[1] + 1))
    screws = [
        (tuple(centre + side * site.radius), tuple(centre - 0.9 * side * site.radius))
        for centre in (site.point + k * site.axis for k in np.linspace(-0.75 * half, 0.75 * half, screw_count))
    ]
    region = _region(ends + [p for screw in screws for p in screw], width + site.radius, *field.shape)
    xs, ys = region.xs, region.ys
    metal = _soft_inside(width / 2 - _axis_frame(xs, ys, *ends)[1])
    for p0, p1 in screws:
        np.maximum(metal, _soft_inside(0.2 * width - _axis_frame(xs, ys, p0, p1)[1]), out=metal)
    field[region.slices] += rng.uniform(*spec.plate_density) * metal
    return _mask_box(metal > 0.5, region)


LESION_PAINTERS = {"fracture": _fracture, "hardware": _hardware, "lytic": _lytic}


# ----------------------------------------------------------------------------------------------------
# Exposure: attenuation field -> 8-bit radiograph


def _texture(rng: np.random.Generator, spec: SyntheticSpec, shape: tuple[int, int], factor: float) -> np.ndarray:
    """A trabecular-looking multiplicative texture: coarse random noise, smoothly upsampled, around 1."""
    height, width = shape
    cell = max(1.0, rng.uniform(*spec.texture_cell) / factor)
    coarse = rng.standard_normal((math.ceil(height / cell) + 1, math.ceil(width / cell) + 1), dtype=np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return 1.0 + rng.uniform(*spec.texture_amplitude) * smooth


def _expose(field: np.ndarray, view: View, rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """The 8-bit radiograph of an attenuation grid: blur, a saturating exposure curve with random
    gain/offset/gamma and a gentle brightness gradient, upsampling to the image size, then noise."""
    field = gaussian_filter(field, rng.uniform(*spec.blur_sigma) / view.factor)
    signal = np.tanh(rng.uniform(*spec.attenuation) * field)
    level = np.clip(rng.uniform(*spec.offset) + rng.uniform(*spec.gain) * signal + _ramp(rng, spec, field.shape), 0, 1)
    level = _upsample(level ** rng.uniform(*spec.gamma), view)
    uniform_pair = rng.random((2, *level.shape), dtype=np.float32)
    noise = (uniform_pair[0] - uniform_pair[1]) * (rng.uniform(*spec.noise_std) * TRIANGULAR_NOISE_SCALE)
    return np.clip((level + noise) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _ramp(rng: np.random.Generator, spec: SyntheticSpec, shape: tuple[int, int]) -> np.ndarray:
    """A linear brightness gradient across the image, up to +-gradient/2 at the edges."""
    ramp_x, ramp_y = rng.uniform(-spec.gradient, spec.gradient, size=2).astype(np.float32)
    height, width = shape
    return (
        ramp_x * np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
        + ramp_y * np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    )


def _upsample(grid: np.ndarray, view: View) -> np.ndarray:
    """The render grid resized (bilinear) to the image size."""
    box = (0.0, 0.0, view.width / view.factor, view.height / view.factor)
    return np.asarray(Image.fromarray(grid).resize((view.width, view.height), Image.Resampling.BILINEAR, box=box))


def _add_marker(image: np.ndarray, rng: np.random.Generator, spec: SyntheticSpec) -> None:
    """With probability marker_prob, a bright L or R block in a random corner (normal and abnormal alike)."""
    if rng.random() >= spec.marker_prob:
        return
    glyph = np.array([[c == "1" for c in row] for row in MARKER_GLYPHS["LR"[int(rng.integers(2))]]])
    height, width = image.shape
    cell = max(1, round(rng.uniform(*spec.marker_size) * min(height, width) / (glyph.shape[0] + 2)))
    block = np.ones(((glyph.shape[0] + 2) * cell, (glyph.shape[1] + 2) * cell))
    block[cell:-cell, cell:-cell] -= (1.0 - MARKER_LETTER_LEVEL) * np.kron(glyph, np.ones((cell, cell)))
    block_h, block_w = block.shape
    y = int(rng.integers(2, max(3, height // 6))) if rng.random() < 0.5 else height - block_h - 2
    x = int(rng.integers(2, max(3, width // 6))) if rng.random() < 0.5 else width - block_w - 2
    y, x = max(0, y), max(0, x)
    patch = (rng.uniform(*spec.marker_level) * 255 * block)[: height - y, : width - x]
    image[y : y + patch.shape[0], x : x + patch.shape[1]] = patch.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# One image, one study


@dataclass(frozen=True)
class Lesion:
    """A painted lesion: its kind and pixel box (x0, y0, x1, y1; x1, y1 exclusive)."""

    kind: str
    box: Box


def render_image(
    part: str, rng: np.random.Generator, spec: SyntheticSpec, lesion_kind: str | None = None
) -> tuple[np.ndarray, list[Lesion]]:
    """One radiograph of `part` (uint8, H x W) and the lesions of `lesion_kind` painted on it (none when None)."""
    count = int(rng.integers(spec.lesions_per_image[0], spec.lesions_per_image[1] + 1)) if lesion_kind else 0
    for _ in range(VIEW_TRIES):
        view = _random_view(rng, spec)
        anatomy = _place(ANATOMY_BUILDERS[part](rng), view, rng, spec)
        sites = _pick_sites(rng, anatomy.bones, view, spec, count)
        if sites or not count:
            break
    else:
        raise RuntimeError(f"no {part} view with a lesion site inside the frame in {VIEW_TRIES} tries")
    bones = np.zeros(view.grid_shape, np.float32)
    _add_bones(bones, [bone for bone in anatomy.bones if all(bone is not site.bone for site in sites)])
    lesions = [_paint_lesion(bones, site, lesion_kind, view, rng, spec) for site in sites]
    bones *= _texture(rng, spec, bones.shape, view.factor)
    tissue = _tissue_layer(anatomy.tissues, rng.uniform(*spec.tissue_density), *view.grid_shape)
    if lesion_kind in SWELLING_KINDS:
        _add_swelling(tissue, sites, rng, spec)
    image = _expose(tissue + bones, view, rng, spec)
    _add_marker(image, rng, spec)
    return image, lesions


def _add_swelling(tissue: np.ndarray, sites: list[Site], rng: np.random.Generator, spec: SyntheticSpec) -> None:
    """Soft-tissue swelling: with probability swelling_prob, a faint oval haze around each lesion site."""
    for site in sites:
        if rng.random() >= spec.swelling_prob:
            continue
        along, across = rng.uniform(2.5, 4.0) * site.radius, rng.uniform(1.8, 2.5) * site.radius
        px, py = site.point
        region = _region([(px, py)], along, *tissue.shape)
        xs, ys = region.xs, region.ys
        u = ((xs - px) * site.axis[0] + (ys - py) * site.axis[1]) / along
        v = ((xs - px) * site.normal[0] + (ys - py) * site.normal[1]) / across
        haze = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
        tissue[region.slices] += rng.uniform(*spec.swelling_density) * haze


def _paint_lesion(bones: np.ndarray, site: Site, kind: str, view: View, rng, spec) -> Lesion:
    """Draw the host bone of `site` with a lesion of `kind`; returns the lesion with its image box."""
    box = LESION_PAINTERS[kind](bones, site, rng, spec, max(view.height, view.width) / view.factor)
    if box is None:
        raise RuntimeError(f"a {kind} covers no bone pixel")
    return Lesion(kind, view.image_box(box))


def png_bytes(image: np.ndarray, compress_level: int) -> bytes:
    """An 8-bit grayscale PNG of `image`: "Up" row filter and Huffman-only deflate, fast for noisy images."""
    height, width = image.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = PNG_FILTER_UP
    rows[:, 1:] = np.diff(image, axis=0, prepend=np.zeros((1, width), np.uint8))
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    header = struct.pack(">IIBBBBB", width, height, 8, PNG_GRAYSCALE, 0, 0, 0)
    data = deflate.compress(rows.tobytes()) + deflate.flush()
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def study_rng(seed: int, key: tuple[int, int]) -> np.random.Generator:
    """The RNG of one study, fixed by (seed, body part index, study index within the part)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STUDY_STREAM, *key)))


def _lesion_flags(rng: np.random.Generator, plan: StudyPlan, spec: SyntheticSpec) -> list[bool]:
    """Which images of the study show the lesion: none when normal, at least one when abnormal."""
    if not plan.label:
        return [False] * plan.images
    flags = list(rng.random(plan.images) < spec.lesion_image_prob)
    if not any(flags):
        flags[int(rng.integers(plan.images))] = True
    return flags


def render_study(plan: StudyPlan, spec: SyntheticSpec, out_dir: Path) -> tuple[list[str], list[str]]:
    """Write one study's PNGs under `out_dir`; returns its image-path rows and lesions.csv rows."""
    rng = study_rng(spec.seed, plan.key)
    weights = np.array([spec.lesion_kind_weights.get(kind, 0.0) for kind in LESION_KINDS])
    kind = LESION_KINDS[int(rng.choice(len(LESION_KINDS), p=weights / weights.sum()))] if plan.label else None
    folder = out_dir / plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    image_rows, lesion_rows = [], []
    for number, flag in enumerate(_lesion_flags(rng, plan, spec), start=1):
        image, lesions = render_image(plan.part, rng, spec, kind if flag else None)
        path = f"{plan.folder}image{number}.png"
        (out_dir / path).write_bytes(png_bytes(image, spec.png_compress_level))
        image_rows.append(path)
        lesion_rows.extend(",".join([path, lesion.kind, *map(str, lesion.box)]) for lesion in lesions)
    return image_rows, lesion_rows


# ----------------------------------------------------------------------------------------------------
# The whole tree


def _render_all(plans: list[StudyPlan], spec: SyntheticSpec, out_dir: Path) -> tuple[list[str], list[str]]:
    """Render every study, in worker processes when num_workers > 1; rows come back sorted."""
    work = partial(render_study, spec=spec, out_dir=out_dir)
    workers = spec.num_workers if spec.num_workers is not None else _cpu_count()
    if workers > 1 and len(plans) > 1:
        chunk = max(1, len(plans) // (8 * workers))
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(work, plans, chunksize=chunk)
    else:
        results = [work(plan) for plan in plans]
    images = sorted(row for study_images, _ in results for row in study_images)
    lesions = sorted(row for _, study_lesions in results for row in study_lesions)
    return images, lesions


def _cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_lines(path: Path, lines: list[str], header: str | None = None) -> None:
    with path.open("w", newline="\n") as handle:
        handle.writelines(f"{line}\n" for line in ([header] if header else []) + lines)


def _write_csvs(out_dir: Path, plans: list[StudyPlan], images: list[str], lesions: list[str]) -> None:
    """The four official headerless CSVs under MURA-v1.1/, and lesions.csv next to it."""
    for split in SPLITS:
        prefix = f"{DATASET_DIR}/{split}/"
        _write_lines(out_dir / DATASET_DIR / f"{split}_image_paths.csv", [p for p in images if p.startswith(prefix)])
        studies = sorted(f"{plan.folder},{plan.label}" for plan in plans if plan.split == split)
        _write_lines(out_dir / DATASET_DIR / f"{split}_labeled_studies.csv", studies)
    _write_lines(out_dir / LESIONS_FILE, lesions, header=LESIONS_HEADER)


def generate_synthetic_mura(root: str | Path, studies_per_part: int, seed: int, **knobs: Any) -> Path:
    """Write a synthetic MURA-v1.1 tree and lesions.csv under `root`; returns root/MURA-v1.1.

    `knobs` override conf/synthetic.yaml (e.g. max_side=256, num_workers=1). The tree is built in a
    hidden sibling folder and renamed into place at the end, so an interrupted run leaves no
    MURA-v1.1 folder; an existing one is never overwritten.
    """
    spec = load_spec(root=str(root), studies_per_part=studies_per_part, seed=seed, **knobs)
    root = Path(spec.root).expanduser()
    target = root / DATASET_DIR
    if target.exists():
        raise SyntheticDataError(
            f"{target} already exists; delete it to regenerate, or pass another root= for a new synthetic set"
        )
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans = plan_studies(spec)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIR}.partial-", dir=root))
    try:
        images, lesions = _render_all(plans, spec, staging)
        _write_csvs(staging, plans, images, lesions)
        os.replace(staging / LESIONS_FILE, root / LESIONS_FILE)
        os.replace(staging / DATASET_DIR, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(_summary(plans, len(images), time.perf_counter() - start, target))
    return target


def _summary(plans: list[StudyPlan], images: int, seconds: float, target: Path) -> str:
    """One line: studies per split, images, abnormal share, time and speed."""
    valid = sum(plan.split == "valid" for plan in plans)
    abnormal = sum(plan.label for plan in plans) / len(plans)
    return (
        f"synthetic MURA: {len(plans)} studies ({len(plans) - valid} train, {valid} valid), {images} images, "
        f"{abnormal:.1%} abnormal studies, {seconds:.1f} s, {images / seconds:.0f} images/s -> {target}"
    )


@hydra.main(version_base="1.3", config_path="../../conf", config_name="synthetic")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """CLI: generate synthetic MURA with conf/synthetic.yaml and the command line's overrides."""
    generate_synthetic_mura(**OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
