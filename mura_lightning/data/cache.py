"""A preprocessed image cache: every image decoded and resized once into one memory-mapped uint8 array."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from mura_lightning.cluster.staging import remove_dead_staging, staging_folder
from mura_lightning.data.images import ImageDecodeError, read_grayscale
from mura_lightning.data.presets import resize
from mura_lightning.errors import MuraError
from mura_lightning.progress import progress

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding or resizing changes: old caches are then rebuilt
IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.json"
CHUNK_SIZE = 64
KEY_LENGTH = 20
STAGING_NAME = re.compile(rf"\.[0-9a-f]{{{KEY_LENGTH}}}\..+")  # .<key>.<random>: a build in progress, or a killed one


class ImageCache:
    """The (N, S, S) uint8 array of resized images of `paths`, with which of them could be decoded.

    It lives in `cache_dir/<key>/`, where the key hashes the cache version, the image size and every path
    with its size and modification time, so a change of any of them builds a new cache. A cache is built in a
    temporary folder and renamed into place when complete: a killed build never leaves a cache that looks
    complete, and the next build removes the temporary folders of builds whose process is gone.
    """

    def __init__(self, folder: Path, paths: Sequence[str], readable: np.ndarray) -> None:
        self.folder = folder
        self.positions = {path: i for i, path in enumerate(paths)}
        self.readable = readable
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict:
        """Data loader workers reopen the memory map rather than receive a copy of the images."""
        return {**self.__dict__, "_images": None}

    def __getitem__(self, path: str) -> np.ndarray | None:
        """The cached (S, S) uint8 image of `path`, or None when it could not be decoded."""
        if self._images is None:
            self._images = np.load(self.folder / IMAGES_FILE, mmap_mode="r")
        position = self.positions[path]
        return np.array(self._images[position]) if self.readable[position] else None


def cache_key(paths: Sequence[str], image_size: int) -> str:
    """A hash of what the cache content depends on."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{image_size}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def _resize_chunk(chunk: tuple[int, list[str]], target: str, image_size: int) -> list[int]:
    """Decode and resize the images of a chunk into the array at `target`; returns the positions that failed."""
    start, paths = chunk
    images = open_memmap(target, mode="r+")
    failed = []
    for offset, path in enumerate(paths):
        try:
            images[start + offset] = resize(read_grayscale(path), image_size)[0].numpy()
        except ImageDecodeError:
            failed.append(start + offset)
    images.flush()
    return failed


def build_cache(paths: Sequence[str], image_size: int, cache_dir: str | Path, num_workers: int) -> ImageCache:
    """The cache of these images at this size: opened when it exists, built (with a progress bar) when not."""
    paths = [str(path) for path in paths]
    folder = Path(cache_dir).expanduser() / cache_key(paths, image_size)
    if not (folder / MANIFEST_FILE).is_file():
        _build(folder, paths, image_size, num_workers)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return ImageCache(folder, paths, np.array(manifest["readable"], dtype=bool))


def _build(folder: Path, paths: list[str], image_size: int, num_workers: int) -> None:
    remove_dead_staging(folder.parent, STAGING_NAME)
    with staging_folder(folder.parent, prefix=f".{folder.name}.") as staging:
        target = staging / IMAGES_FILE
        open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size)).flush()
        chunks = [(start, paths[start : start + CHUNK_SIZE]) for start in range(0, len(paths), CHUNK_SIZE)]
        work = partial(_resize_chunk, target=str(target), image_size=image_size)
        failed: list[int] = []
        with progress(f"caching {len(paths)} images at {image_size} px", len(paths), unit="images") as bar:
            if num_workers > 1:
                with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
                    for chunk, chunk_failed in zip(chunks, pool.imap(work, chunks), strict=True):
                        failed += chunk_failed
                        bar.advance(len(chunk[1]))
            else:
                for chunk in chunks:
                    failed += work(chunk)
                    bar.advance(len(chunk[1]))
        readable = np.ones(len(paths), dtype=bool)
        readable[failed] = False
        manifest = {
            "version": CACHE_VERSION,
            "image_size": image_size,
            "count": len(paths),
            "readable": readable.tolist(),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))
        try:
            os.replace(staging, folder)
        except OSError as err:
            if not (folder / MANIFEST_FILE).is_file():
                raise MuraError(f"cannot move the image cache into {folder}: {err}") from err
    log.info("image cache ready: %s (%d images, %d unreadable)", folder, len(paths), len(failed))
