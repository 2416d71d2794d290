"""Small hand-made MURA-v1.1 trees for tests, with the quirks of the real dataset on demand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DATASET = "MURA-v1.1"


@dataclass(frozen=True)
class Study:
    """One study of the tree: where it lives, its label and how many images it holds."""

    split: str
    part: str
    patient: int
    number: int
    label: int
    images: int = 2

    @property
    def folder(self) -> str:
        suffix = "positive" if self.label else "negative"
        return f"{self.split}/XR_{self.part.upper()}/patient{self.patient:05d}/study{self.number}_{suffix}"

    def image_paths(self) -> list[str]:
        return [f"{self.folder}/image{view}.png" for view in range(1, self.images + 1)]


def standard_studies(parts=("shoulder", "wrist"), patients_per_part=10, valid_patients_per_part=4) -> list[Study]:
    """Studies over a few body parts, about half abnormal; some patients have a second study in the same or
    another body part."""
    studies, patient = [], 1
    for split, count in (("train", patients_per_part), ("valid", valid_patients_per_part)):
        for part in parts:
            for i in range(count):
                studies.append(Study(split, part, patient, 1, label=i % 2, images=1 + i % 3))
                if i % 4 == 0:
                    studies.append(Study(split, part, patient, 2, label=1 - i % 2, images=1))
                if i % 4 == 1:
                    other = parts[(parts.index(part) + 1) % len(parts)]
                    studies.append(Study(split, other, patient, 1, label=i % 2, images=2))
                patient += 1
    return studies


def write_image(path: Path, seed: int, size=(24, 20)) -> None:
    """A small random grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_tree(parent: Path, studies: list[Study], csvs: bool = True) -> Path:
    """Write the studies' images (and the four official CSVs) under parent/MURA-v1.1; return that folder."""
    root = parent / DATASET
    for n, study in enumerate(studies):
        for k, rel in enumerate(study.image_paths()):
            write_image(root / rel, seed=n * 10 + k)
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True, exist_ok=True)
        if csvs:
            chosen = [s for s in studies if s.split == split]
            write_csv(root / f"{split}_image_paths.csv", [f"{DATASET}/{p}" for s in chosen for p in s.image_paths()])
            write_csv(root / f"{split}_labeled_studies.csv", [f"{DATASET}/{s.folder}/,{s.label}" for s in chosen])
    return root


def write_csv(path: Path, lines: list[str]) -> None:
    """A headerless CSV, one line per entry."""
    path.write_text("".join(line + "\n" for line in lines))


def append_csv(path: Path, lines: list[str]) -> None:
    """Add lines to a headerless CSV."""
    with path.open("a") as handle:
        handle.writelines(line + "\n" for line in lines)
