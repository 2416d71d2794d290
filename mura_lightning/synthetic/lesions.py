"""Lesions: each modifies the host bone (or adds metal on it) and returns its pixel box."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mura_lightning.synthetic.anatomy import Bone, rotate
from mura_lightning.synthetic.draw import (
    PROFILE_EPS,
    Box,
    add_bones,
    axis_frame,
    bone_profile,
    bone_radius,
    bone_region,
    mask_box,
    pixel_region,
    soft_inside,
)
from mura_lightning.synthetic.spec import SyntheticSpec
from mura_lightning.synthetic.view import View

SWELLING_KINDS = ("fracture", "lytic")  # lesion kinds that may come with soft-tissue swelling
SITE_TRIES = 6  # positions tried along one host bone
LYTIC_RIM_WIDTH = 0.5  # sclerotic rim of a lytic spot, as a fraction of its half-width
FRACTURE_REACH = 2.2  # callus and fragments stay within this many bone radii of the break
PLATE_MAX_BONE_FRACTION = 1.0  # a plate is at most as wide as its bone
SITE_MARGIN = 0.08  # a lesion site keeps this fraction of the short side from the image border


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
        return float(bone_radius(self.bone, self.t))


def pick_sites(rng: np.random.Generator, bones: list[Bone], view: View, spec: SyntheticSpec, count: int) -> list[Site]:
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
    region = bone_region(bone, *field.shape, margin=max(reach, FRACTURE_REACH * extent))
    xs, ys = region.xs, region.ys
    tilt = math.radians(rng.uniform(-spec.fracture_tilt_deg, spec.fracture_tilt_deg))
    across = np.array(rotate(tuple(site.axis), tilt))
    along = np.array([-across[1], across[0]])
    px, py = site.point
    wave = 2 * math.pi / (rng.uniform(1.0, 2.5) * site.radius)
    jag = 0.25 * gap * np.sin(wave * ((xs - px) * along[0] + (ys - py) * along[1]) + rng.uniform(0, 2 * math.pi))
    signed = (xs - px) * across[0] + (ys - py) * across[1] + jag
    cos_b, sin_b = math.cos(bend), math.sin(bend)
    far_x, far_y = xs - shift[0] - px, ys - shift[1] - py
    far = bone_profile(bone, px + cos_b * far_x + sin_b * far_y, py - sin_b * far_x + cos_b * far_y)
    profile = np.where(signed > 0, far, bone_profile(bone, xs, ys))
    gap_mask = soft_inside(gap / 2 - np.abs(signed))
    field[region.slices] += profile * (1.0 - rng.uniform(*spec.fracture_contrast) * gap_mask)
    lesion = (gap_mask > 0.5) & (profile > PROFILE_EPS)
    extra = _fragments(xs, ys, site, extent, rng, spec)
    if rng.random() < spec.fracture_callus_prob:
        extra = extra + _callus(xs, ys, site, extent, rng, spec) * (1.0 - gap_mask)
    field[region.slices] += extra
    return mask_box(lesion | (extra > PROFILE_EPS), region)


def _fragments(xs, ys, site: Site, extent: float, rng, spec) -> np.ndarray:
    """Small dense bone chips scattered within a few `extent`s of the break (a comminuted fracture)."""
    chips = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), np.float32)
    for _ in range(int(rng.integers(spec.fracture_fragments[0], spec.fracture_fragments[1] + 1))):
        radius = rng.uniform(0.3, 0.5) * extent
        offset = rng.uniform(-1.2, 1.2) * site.axis + rng.uniform(-1.6, 1.6) * site.normal
        cx, cy = site.point + offset * extent
        distance = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        chips += rng.uniform(*spec.fracture_fragment_density) * np.sqrt(
            np.clip(1.0 - (distance / radius) ** 2, 0.0, None)
        )
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
    region = bone_region(bone, *field.shape)
    xs, ys = region.xs, region.ys
    u = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / along
    v = (-(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)) / across
    rho = np.sqrt(u * u + v * v)
    spot = soft_inside((1.0 - rho) * across)
    rim = soft_inside((1.0 + LYTIC_RIM_WIDTH - rho) * across) - spot
    profile = bone_profile(bone, xs, ys)
    on_bone = profile > PROFILE_EPS
    sclerosis = rng.uniform(*spec.lytic_rim_density) * rim * on_bone
    field[region.slices] += profile * (1.0 - rng.uniform(*spec.lytic_contrast) * spot) + sclerosis
    return mask_box((spot > 0.5) & on_bone, region)


def _hardware(field, site: Site, rng, spec, size: float) -> Box | None:
    """A bright metal plate along the host bone's cortex, held by screws across the bone."""
    bone = site.bone
    add_bones(field, [bone])
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
    region = pixel_region(ends + [p for screw in screws for p in screw], width + site.radius, *field.shape)
    xs, ys = region.xs, region.ys
    metal = soft_inside(width / 2 - axis_frame(xs, ys, *ends)[1])
    for p0, p1 in screws:
        np.maximum(metal, soft_inside(0.2 * width - axis_frame(xs, ys, p0, p1)[1]), out=metal)
    field[region.slices] += rng.uniform(*spec.plate_density) * metal
    return mask_box(metal > 0.5, region)


LESION_PAINTERS = {"fracture": _fracture, "hardware": _hardware, "lytic": _lytic}


@dataclass(frozen=True)
class Lesion:
    """A painted lesion: its kind and pixel box (x0, y0, x1, y1; x1, y1 exclusive)."""

    kind: str
    box: Box


def add_swelling(tissue: np.ndarray, sites: list[Site], rng: np.random.Generator, spec: SyntheticSpec) -> None:
    """Soft-tissue swelling: with probability swelling_prob, a faint oval haze around each lesion site."""
    for site in sites:
        if rng.random() >= spec.swelling_prob:
            continue
        along, across = rng.uniform(2.5, 4.0) * site.radius, rng.uniform(1.8, 2.5) * site.radius
        px, py = site.point
        region = pixel_region([(px, py)], along, *tissue.shape)
        xs, ys = region.xs, region.ys
        u = ((xs - px) * site.axis[0] + (ys - py) * site.axis[1]) / along
        v = ((xs - px) * site.normal[0] + (ys - py) * site.normal[1]) / across
        haze = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
        tissue[region.slices] += rng.uniform(*spec.swelling_density) * haze


def paint_lesion(bones: np.ndarray, site: Site, kind: str, view: View, rng, spec) -> Lesion:
    """Draw the host bone of `site` with a lesion of `kind`; returns the lesion with its image box."""
    box = LESION_PAINTERS[kind](bones, site, rng, spec, max(view.height, view.width) / view.factor)
    if box is None:
        raise RuntimeError(f"a {kind} covers no bone pixel")
    return Lesion(kind, view.image_box(box))
