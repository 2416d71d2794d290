"""Decoding single-frame grayscale DICOM radiographs into the (H, W) uint8 arrays that PNGs decode to."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mura_lightning.errors import ImageDecodeError, MuraError

DICOM_SUFFIX = ".dcm"
PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
INSTALL_HINT = "pip install 'mura-lightning[dicom]'"


class DicomSupportMissingError(MuraError, ImportError):
    """pydicom, from the optional `dicom` extra, is not installed, so no DICOM file can be read."""


def has_dicom_suffix(path: str | Path) -> bool:
    """True for a `.dcm` file name (any case), without opening the file."""
    return Path(path).suffix.lower() == DICOM_SUFFIX


def is_dicom(path: str | Path) -> bool:
    """True for a `.dcm` file name, or a file holding the DICOM preamble (128 bytes, then `DICM`)."""
    path = Path(path)
    if has_dicom_suffix(path):
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(PREAMBLE_LENGTH + len(MAGIC))
    except OSError:
        return False
    return head[PREAMBLE_LENGTH:] == MAGIC


def _pydicom() -> Any:
    """The pydicom module, or a DicomSupportMissingError saying which extra to install."""
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as err:
        raise DicomSupportMissingError(
            f"reading DICOM files needs pydicom, which is not installed ({err}); install it with {INSTALL_HINT}"
        ) from err
    return pydicom


def _refuse(path: str | Path, problem: str, advice: str) -> ImageDecodeError:
    """An ImageDecodeError naming the file, what is wrong with it and what to do."""
    return ImageDecodeError(f"cannot decode DICOM {path}: {problem}. {advice}")


def _read(source: str | Path | BinaryIO, name: str | Path, **options: Any) -> Any:
    """The dataset of a DICOM file or in-memory stream (pydicom.dcmread with `options`), or an ImageDecodeError
    naming it `name`."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(source, **options)
    except Exception as err:  # pydicom raises many types (InvalidDicomError, EOFError, OSError, RecursionError, ...)
        raise _refuse(name, f"not a readable DICOM file ({err})", "Replace or remove the file.") from err


def sop_instance_uid(path: str | Path) -> str | None:
    """The SOP Instance UID of a DICOM file (header only, pixel data not read), or None when it has none."""
    uid = _read(path, path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID")
    return str(uid) if uid else None


def _check_single_grayscale(dataset: Any, path: str | Path) -> None:
    """Refuse multi-frame, colour and pixel-less datasets with a message saying what to do."""
    if "PixelData" not in dataset:
        raise _refuse(path, "it holds no pixel data (not an image)", "Remove it from the input.")
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise _refuse(
            path, f"it has {frames} frames; only single-frame radiographs are read", "Save each frame as its own file."
        )
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples != 1 or photometric not in GRAYSCALE:
        raise _refuse(
            path,
            f"it is a colour image (PhotometricInterpretation {photometric or 'missing'}, SamplesPerPixel {samples}); "
            f"only grayscale radiographs ({' or '.join(GRAYSCALE)}) are read",
            "Export the radiograph as grayscale.",
        )


def _output_range(dataset: Any) -> tuple[float, float]:
    """The nominal range of the values after the modality and VOI transforms, as pydicom's windowing uses it:
    the VOI LUT's bit depth, else the modality LUT's, else BitsStored (signed or not) through rescale slope and
    intercept."""
    voi = dataset.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        return 0.0, float(2 ** voi[0].LUTDescriptor[2] - 1)
    modality = dataset.get("ModalityLUTSequence")
    if modality:
        return 0.0, float(2 ** modality[0].LUTDescriptor[2] - 1)
    bits = int(dataset.BitsStored)
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return float(min(low, high)), float(max(low, high))


def read_dicom(path: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode a single-frame grayscale DICOM file (or an in-memory stream, named `name` in messages) into an
    (H, W) uint8 array: modality LUT (rescale), then VOI LUT or window when present, the output range mapped to
    0-255, MONOCHROME1 inverted. A multi-frame, colour or undecodable file raises ImageDecodeError; a missing
    pydicom raises DicomSupportMissingError."""
    pydicom = _pydicom()
    shown = name or path
    dataset = _read(path, shown)
    _check_single_grayscale(dataset, shown)
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)  # each failing decoder plugin logs a traceback; the error below has all
    try:
        values = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
        values = pydicom.pixels.apply_voi_lut(values, dataset)
    except Exception as err:  # the decoder plugins (pydicom, pylibjpeg's C libraries) raise many types
        syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
        advice = "The file is damaged: replace or remove it."
        if syntax is None or syntax.is_compressed:
            advice = (
                f"Install the decoders with {INSTALL_HINT}, or convert the file to an uncompressed transfer syntax "
                "(e.g. `gdcmconv --raw` or `dcmdjpeg`)."
            )
        syntax_name = getattr(syntax, "name", "no transfer syntax")
        problem = f"its pixel data ({syntax_name}) cannot be decoded: {' '.join(str(err).split())}"
        raise _refuse(shown, problem, advice) from err
    finally:
        pydicom_log.setLevel(level)
    if values.ndim != 2:
        raise _refuse(shown, f"its pixel data has shape {values.shape}, not (rows, columns)", "Remove it.")
    low, high = _output_range(dataset)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - gray if dataset.PhotometricInterpretation == "MONOCHROME1" else gray
