"""Decoding radiograph files into one 8-bit grayscale channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mura_lightning.data.dicom import has_dicom_suffix, is_dicom, read_dicom
from mura_lightning.errors import ImageDecodeError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535
RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg")  # besides DICOM files, whatever their name
RADIOGRAPH_KINDS = "PNG, JPEG or DICOM"  # the same, for messages


def to_grayscale(image: Image.Image) -> np.ndarray:
    """An (H, W) uint8 array of any PIL image: L, RGB, RGBA, palette, or 16-bit (scaled to 0-255, not clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        return np.clip(np.rint(wide * (255.0 / SIXTEEN_BIT_MAX)), 0, 255).astype(np.uint8)
    if image.mode == "L":
        return np.array(image, dtype=np.uint8)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])
    return np.array(image.convert("L"), dtype=np.uint8)


def is_radiograph(path: str | Path) -> bool:
    """True for a file predict takes as a radiograph, given alone or found in a folder: a PNG or JPEG (by its
    suffix), or a DICOM file; never a hidden one (AppleDouble `._*` files)."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in RADIOGRAPH_SUFFIXES or is_dicom(path)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Decode an image or DICOM file into an (H, W) uint8 array; an unreadable, truncated or unsupported file
    raises ImageDecodeError. A `.dcm` name goes to the DICOM reader; other files are opened with PIL, and only a
    file PIL cannot identify is checked for the DICOM preamble (so a PNG is opened once, not sniffed first)."""
    if has_dicom_suffix(path):
        return read_dicom(path)
    try:
        with Image.open(path) as image:
            image.load()
            return to_grayscale(image)
    except UnidentifiedImageError as err:
        if is_dicom(path):
            return read_dicom(path)
        error = err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        error = err
    raise ImageDecodeError(f"cannot decode image {path}: {error}. Replace or remove the file.") from error
