"""The view: image size and the similarity transform from the canonical frame to pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mura_lightning.synthetic.anatomy import Anatomy
from mura_lightning.synthetic.draw import Box
from mura_lightning.synthetic.spec import SyntheticSpec


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


def random_view(rng: np.random.Generator, spec: SyntheticSpec) -> View:
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


def place(anatomy: Anatomy, view: View, rng: np.random.Generator, spec: SyntheticSpec) -> Anatomy:
    """The anatomy in grid coordinates, every bone and tissue thickness scaled by one random factor."""
    size = rng.uniform(*spec.size_jitter)
    bones = [
        replace(b, p0=view.point(b.p0), p1=view.point(b.p1), r0=b.r0 * view.scale * size, r1=b.r1 * view.scale * size)
        for b in anatomy.bones
    ]
    tissues = [replace(t, p0=view.point(t.p0), p1=view.point(t.p1), r=t.r * view.scale * size) for t in anatomy.tissues]
    return Anatomy(bones, tissues)
