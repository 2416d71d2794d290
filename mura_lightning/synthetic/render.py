"""Rendering: an attenuation field (tissue + bone + lesions), then exposure, blur, noise and a side marker."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from mura_lightning.synthetic.anatomy import ANATOMY_BUILDERS
from mura_lightning.synthetic.draw import add_bones, tissue_layer
from mura_lightning.synthetic.lesions import SWELLING_KINDS, Lesion, add_swelling, paint_lesion, pick_sites
from mura_lightning.synthetic.plan import StudyPlan
from mura_lightning.synthetic.spec import LESION_KINDS, SyntheticSpec, lesion_spec
from mura_lightning.synthetic.view import View, place, random_view

STUDY_STREAM = 0  # SeedSequence spawn key of the studies' RNGs: (STUDY_STREAM, part, study)
VIEW_TRIES = 20  # views drawn until one shows a lesion site inside the frame
MARKER_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}
TRIANGULAR_NOISE_SCALE = math.sqrt(6.0)  # makes the difference of two U(0, 1) draws unit-variance
MARKER_LETTER_LEVEL = 0.35  # the letter's brightness relative to its block


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


def render_image(
    part: str, rng: np.random.Generator, spec: SyntheticSpec, lesion_kind: str | None = None
) -> tuple[np.ndarray, list[Lesion]]:
    """One radiograph of `part` (uint8, H x W) and the lesions of `lesion_kind` painted on it (none when None),
    drawn as large and dense as `part`'s subtlety and the difficulty say."""
    count = int(rng.integers(spec.lesions_per_image[0], spec.lesions_per_image[1] + 1)) if lesion_kind else 0
    for _ in range(VIEW_TRIES):
        view = random_view(rng, spec)
        anatomy = place(ANATOMY_BUILDERS[part](rng), view, rng, spec)
        sites = pick_sites(rng, anatomy.bones, view, spec, count)
        if sites or not count:
            break
    else:
        raise RuntimeError(f"no {part} view with a lesion site inside the frame in {VIEW_TRIES} tries")
    bones = np.zeros(view.grid_shape, np.float32)
    add_bones(bones, [bone for bone in anatomy.bones if all(bone is not site.bone for site in sites)])
    lesion_knobs = lesion_spec(spec, part)
    lesions = [paint_lesion(bones, site, lesion_kind, view, rng, lesion_knobs) for site in sites]
    bones *= _texture(rng, spec, bones.shape, view.factor)
    tissue = tissue_layer(anatomy.tissues, rng.uniform(*spec.tissue_density), *view.grid_shape)
    if lesion_kind in SWELLING_KINDS:
        add_swelling(tissue, sites, rng, lesion_knobs)
    image = _expose(tissue + bones, view, rng, spec)
    _add_marker(image, rng, spec)
    return image, lesions


def study_rng(seed: int, key: tuple[int, int]) -> np.random.Generator:
    """The RNG of one study, fixed by (seed, body part index, study index within the part)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STUDY_STREAM, *key)))


def lesion_flags(rng: np.random.Generator, images: int, mode: str | None) -> list[bool]:
    """Which of a study's images show its lesion: none in a normal study (`mode` None); for an abnormal one, as
    its kind's `lesion_views` mode says: `all`, `one` at random, or a `subset` of 1 to all of them (the count
    uniform, then which ones at random)."""
    if mode is None:
        return [False] * images
    count = {"all": images, "one": 1}.get(mode) or int(rng.integers(1, images + 1))
    shown = set(rng.choice(images, size=count, replace=False).tolist())
    return [image in shown for image in range(images)]


def render_study(plan: StudyPlan, spec: SyntheticSpec) -> tuple[str | None, list[tuple[np.ndarray, list[Lesion]]]]:
    """The lesion kind of one study (None when normal) and its images, in order, each with the lesions painted on
    it (none in a normal study, and none on the views of an abnormal one that do not show it: lesion_views)."""
    rng = study_rng(spec.seed, plan.key)
    weights = np.array([spec.lesion_kind_weights.get(kind, 0.0) for kind in LESION_KINDS])
    kind = LESION_KINDS[int(rng.choice(len(LESION_KINDS), p=weights / weights.sum()))] if plan.label else None
    flags = lesion_flags(rng, plan.images, spec.lesion_views[kind] if kind else None)
    return kind, [render_image(plan.part, rng, spec, kind if flag else None) for flag in flags]
