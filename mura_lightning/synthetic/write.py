"""Writing the tree: PNG files, the four official CSVs and lesions.csv, built aside and renamed into place."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import struct
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mura_lightning.data.lesions import LESION_COLUMNS, LESIONS_FILE
from mura_lightning.synthetic.plan import DATASET_DIR, SPLITS, StudyPlan, plan_studies
from mura_lightning.synthetic.record import write_settings
from mura_lightning.synthetic.render import render_study
from mura_lightning.synthetic.spec import SyntheticDataError, SyntheticSpec, load_spec

LESIONS_HEADER = ",".join(LESION_COLUMNS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAYSCALE, PNG_FILTER_UP = 0, 2  # IHDR colour type and per-row filter type


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


def write_study(plan: StudyPlan, spec: SyntheticSpec, out_dir: Path) -> tuple[list[str], list[str]]:
    """Write one study's PNGs under `out_dir`; returns its image-path rows and lesions.csv rows: one per lesion
    with its box, and for an abnormal study one without a box for each view that does not show the lesion."""
    (out_dir / plan.folder).mkdir(parents=True, exist_ok=True)
    image_rows, lesion_rows = [], []
    kind, images = render_study(plan, spec)
    for number, (image, lesions) in enumerate(images, start=1):
        path = f"{plan.folder}image{number}.png"
        (out_dir / path).write_bytes(png_bytes(image, spec.png_compress_level))
        image_rows.append(path)
        lesion_rows.extend(",".join([path, lesion.kind, *map(str, lesion.box)]) for lesion in lesions)
        if kind and not lesions:
            lesion_rows.append(",".join([path, kind, *[""] * 4]))
    return image_rows, lesion_rows


def _write_all(plans: list[StudyPlan], spec: SyntheticSpec, out_dir: Path) -> tuple[list[str], list[str]]:
    """Render and write every study, in worker processes when num_workers > 1; rows come back sorted."""
    work = partial(write_study, spec=spec, out_dir=out_dir)
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

    `knobs` override the package's defaults.yaml (e.g. max_side=256, num_workers=1). The settings are recorded
    in the tree (record.SETTINGS_FILE). The tree is built in a hidden sibling folder and renamed into place at
    the end, so an interrupted run leaves no MURA-v1.1 folder; an existing one is never overwritten.
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
        images, lesions = _write_all(plans, spec, staging)
        _write_csvs(staging, plans, images, lesions)
        write_settings(staging / DATASET_DIR, spec)
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
