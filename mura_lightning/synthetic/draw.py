"""Drawing on the attenuation grid: pixel regions, distances to a segment, bone and soft-tissue profiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mura_lightning.synthetic.anatomy import Bone, Tissue

FLARE_WIDTH = 0.12  # width of the widened bone ends, as a fraction of the bone length
PROFILE_EPS = 0.05  # bone density below which a pixel counts as off the bone

Box = tuple[int, int, int, int]


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


def pixel_region(points: Sequence[tuple[float, float]], margin: float, height: int, width: int) -> Region:
    """The box around `points` grown by `margin` pixels, clipped to the image."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Region(
        max(0, math.floor(min(ys) - margin)),
        min(height, math.ceil(max(ys) + margin) + 1),
        max(0, math.floor(min(xs) - margin)),
        min(width, math.ceil(max(xs) + margin) + 1),
    )


def axis_frame(xs, ys, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: position along the segment p0 -> p1 (t in [0, 1]) and distance to the segment."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    rx, ry = xs - p0[0], ys - p0[1]
    t = np.clip((rx * vx + ry * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    dx, dy = rx - t * vx, ry - t * vy
    return t, np.sqrt(dx * dx + dy * dy)


def bone_radius(bone: Bone, t):
    """The bone's radius at position t along its axis, widened towards the ends."""
    base = bone.r0 + (bone.r1 - bone.r0) * t
    flare = bone.flare0 * np.exp(-((t / FLARE_WIDTH) ** 2)) + bone.flare1 * np.exp(-(((1 - t) / FLARE_WIDTH) ** 2))
    return base * (1.0 + flare)


def bone_profile(bone: Bone, xs, ys) -> np.ndarray:
    """Projected density of a hollow bone: a bright cortex shell around a darker medulla."""
    t, d = axis_frame(xs, ys, bone.p0, bone.p1)
    u = d / bone_radius(bone, t)
    inner = 1.0 - bone.cortex
    outer_chord = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    inner_chord = np.sqrt(np.clip(inner * inner - u * u, 0.0, None))
    return (bone.density * (outer_chord - (1.0 - bone.medulla) * inner_chord)).astype(np.float32)


def bone_region(bone: Bone, height: int, width: int, margin: float = 0.0) -> Region:
    """The box holding the whole bone, widened ends included, grown by `margin` pixels."""
    reach = max(bone.r0 * (1 + bone.flare0), bone.r1 * (1 + bone.flare1)) + margin + 1.0
    return pixel_region([bone.p0, bone.p1], reach, height, width)


def tissue_layer(tissues: list[Tissue], density: float, height: int, width: int) -> np.ndarray:
    """Soft tissue: the union (max) of rounded capsules, thickest along their axes."""
    layer = np.zeros((height, width), np.float32)
    for tissue in tissues:
        region = pixel_region([tissue.p0, tissue.p1], tissue.r + 1.0, height, width)
        if region.empty:
            continue
        _, d = axis_frame(region.xs, region.ys, tissue.p0, tissue.p1)
        profile = density * np.sqrt(np.clip(1.0 - (d / tissue.r) ** 2, 0.0, None))
        np.maximum(layer[region.slices], profile, out=layer[region.slices])
    return layer


def add_bones(field: np.ndarray, bones: list[Bone]) -> None:
    """Add each bone's projected density to the field (overlapping bones add up, as on film)."""
    height, width = field.shape
    for bone in bones:
        region = bone_region(bone, height, width)
        if not region.empty:
            field[region.slices] += bone_profile(bone, region.xs, region.ys)


def mask_box(mask: np.ndarray, region: Region) -> Box | None:
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


def soft_inside(distance_inside: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance to an edge (positive inside), about one pixel wide."""
    return np.clip(distance_inside + 0.5, 0.0, 1.0)
