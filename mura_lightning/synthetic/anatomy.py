"""Anatomy: bones as tapered capsules in a canonical frame (long axis vertical, about [-0.5, 0.5] square)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np


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
    tissues = [Tissue((0.0, -0.65), (0.0, 0.0), 0.22), Tissue((0.0, 0.0), rotate((0.0, 0.65), flexion), 0.19)]
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


def rotate(point: tuple[float, float], angle: float) -> tuple[float, float]:
    """`point` rotated by `angle` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return c * point[0] - s * point[1], s * point[0] + c * point[1]


def _rotate_bone(bone: Bone, angle: float) -> Bone:
    return replace(bone, p0=rotate(bone.p0, angle), p1=rotate(bone.p1, angle))
