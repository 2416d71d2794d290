"""The generator's settings: their schema, their defaults (defaults.yaml in this package) and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import MuraError

DEFAULTS_FILE = "defaults.yaml"
LESION_KINDS = ("fracture", "hardware", "lytic")
LESION_VIEW_MODES = ("all", "subset", "one")  # which views of an abnormal study show its lesion (lesion_views)
MIN_STUDIES_PER_PART = 4  # every body part gets a train and a valid study of each label
LESION_SIZE_KNOBS = ("fracture_gap", "fracture_shift", "fracture_angulation_deg", "lytic_diameter", "plate_width")
LESION_DENSITY_KNOBS = (
    "fracture_contrast",
    "fracture_callus_density",
    "fracture_fragment_density",
    "lytic_contrast",
    "lytic_rim_density",
    "plate_density",
    "swelling_density",
)


class SyntheticDataError(MuraError):
    """Bad generator settings, or a synthetic tree already in the way."""


Range = tuple[float, float]


@dataclass
class SyntheticSpec:
    """Every generator knob; root, studies_per_part and seed have no default, the others' defaults and
    meanings are in this package's defaults.yaml."""

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
    lesion_views: dict[str, str] = MISSING
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
    fracture_fragment_density: Range = MISSING
    plate_width: Range = MISSING
    plate_length: Range = MISSING
    plate_density: Range = MISSING
    screws: tuple[int, int] = MISSING
    lytic_diameter: Range = MISSING
    lytic_contrast: Range = MISSING
    lytic_max_bone_fraction: float = MISSING
    lytic_elongation: Range = MISSING
    lytic_rim_density: Range = MISSING
    subtlety: dict[str, float] = MISSING
    difficulty: float = MISSING


def defaults_path() -> str:
    """Where the knobs' defaults and their meanings are documented (for messages)."""
    return str(resources.files(__package__) / DEFAULTS_FILE)


def load_spec(**overrides: Any) -> SyntheticSpec:
    """The generator settings: the package's defaults with `overrides` on top, type-checked and validated."""
    defaults = OmegaConf.create((resources.files(__package__) / DEFAULTS_FILE).read_text())
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SyntheticSpec), defaults, overrides)
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # its message names the key; say where the knobs are documented
        raise SyntheticDataError(f"bad synthetic MURA setting ({err}); the knobs are in {defaults_path()}") from err
    _validate(spec)
    return spec


def visibility(spec: SyntheticSpec, part: str) -> float:
    """How large and dense `part`'s lesions are drawn, relative to the lesion knobs: (1 - subtlety) ** difficulty."""
    return (1.0 - spec.subtlety[part]) ** spec.difficulty


def lesion_spec(spec: SyntheticSpec, part: str) -> SyntheticSpec:
    """`spec` with its lesion size and density knobs scaled by the visibility of `part`'s lesions."""
    scale = visibility(spec, part)
    knobs = LESION_SIZE_KNOBS + LESION_DENSITY_KNOBS
    return replace(spec, **{name: tuple(scale * value for value in getattr(spec, name)) for name in knobs})


def _subtlety_problems(spec: SyntheticSpec) -> list[str]:
    """What is wrong with the subtlety map and the difficulty knob, if anything."""
    problems = []
    unknown, missing = set(spec.subtlety) - set(BODY_PARTS), set(BODY_PARTS) - set(spec.subtlety)
    if unknown or missing:
        problems.append(
            f"subtlety needs exactly the body parts {', '.join(BODY_PARTS)}; "
            f"unknown: {sorted(unknown) or 'none'}, missing: {sorted(missing) or 'none'}"
        )
    bad = {part: value for part, value in spec.subtlety.items() if not 0 <= value < 1}
    if bad:
        problems.append(f"subtlety values must lie in [0, 1) (1 would erase the lesions), got {bad}")
    if not (spec.difficulty >= 0 and math.isfinite(spec.difficulty)):
        problems.append(f"difficulty={spec.difficulty} must be a finite number >= 0 (0: every lesion at full size)")
    return problems


def _validate(spec: SyntheticSpec) -> None:
    problems = _subtlety_problems(spec)
    if spec.studies_per_part < MIN_STUDIES_PER_PART:
        problems.append(
            f"studies_per_part={spec.studies_per_part} is too small: every body part gets train and valid studies "
            f"of both labels, so it needs at least {MIN_STUDIES_PER_PART}"
        )
    if not (0 < spec.valid_fraction < 1 and 0 < spec.abnormal_fraction < 1):
        problems.append(
            f"valid_fraction={spec.valid_fraction} and abnormal_fraction={spec.abnormal_fraction} must lie strictly "
            "between 0 and 1: every body part gets train and valid studies of both labels"
        )
    if not 0 < spec.min_side <= spec.max_side:
        problems.append(f"need 0 < min_side <= max_side, got {spec.min_side} and {spec.max_side}")
    if not math.isclose(sum(spec.studies_per_patient_probs), 1.0):
        problems.append(f"studies_per_patient_probs={spec.studies_per_patient_probs} must sum to 1")
    if set(spec.lesion_views) != set(LESION_KINDS) or not set(spec.lesion_views.values()) <= set(LESION_VIEW_MODES):
        problems.append(
            f"lesion_views={dict(spec.lesion_views)} needs one of {', '.join(LESION_VIEW_MODES)} for each lesion kind "
            f"({', '.join(LESION_KINDS)})"
        )
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
        raise SyntheticDataError("; ".join(problems) + f" (defaults and meanings: {defaults_path()})")
