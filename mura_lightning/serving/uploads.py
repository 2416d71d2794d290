"""Uploaded radiographs decoded in memory, their kind sniffed from their bytes (never from their name), their size
checked before their pixels are decoded: each becomes the (H, W) uint8 array that predict reads from a file, or a
Refusal saying why not."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mura_lightning.data.dicom import MAGIC, PREAMBLE_LENGTH, read_dicom
from mura_lightning.data.images import RADIOGRAPH_KINDS, to_grayscale
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.errors import ImageDecodeError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
SHOWN_NAME_LENGTH = 200  # a client's file name is only echoed back, cut to this


@dataclass(frozen=True)
class Refusal:
    """Why a request, or one of its files, is refused: the HTTP status, a short reason (the metrics' label) and
    a message for people."""

    status: int
    reason: str
    message: str


class RefusedError(Exception):
    """A request refused as a whole, with its Refusal."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def shown_name(filename: str | None, position: int) -> str:
    """How an upload is named in answers and logs: its file name as the client gave it (only echoed, never used as
    a path), cut short and without control characters, or `file N`."""
    name = "".join(char for char in (filename or "") if char.isprintable())[:SHOWN_NAME_LENGTH]
    return name or f"file {position + 1}"


def sniff(data: bytes) -> str | None:
    """The kind of an upload by its first bytes: png, jpeg or dicom (the 128-byte preamble, then DICM); None for
    anything else."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(MAGIC)] == MAGIC:
        return "dicom"
    return None


@dataclass(frozen=True)
class Upload:
    """A decoded upload: its name (as echoed), kind (png, jpeg, dicom), (H, W) uint8 pixels, and the MURA body part
    its DICOM header names ("" if none)."""

    name: str
    kind: str
    gray: np.ndarray
    body_part: str


def decode_upload(data: bytes, name: str, max_pixels: int) -> Upload | Refusal:
    """The radiograph in `data` decoded as predict decodes that file (an Upload), or the Refusal of it: 415 for
    what is not a PNG, JPEG or DICOM, 422 for an image over `max_pixels` (checked from its header, before decoding:
    decompression bombs) or one that cannot be decoded (empty, truncated, multi-frame or colour DICOM...), the
    message naming the file."""
    kind = sniff(data)
    if not data:
        return Refusal(422, "empty_file", f"{name} is empty (0 bytes): send the radiograph's content")
    if kind is None:
        return Refusal(415, "unsupported_type", f"{name} is not a {RADIOGRAPH_KINDS} file (judged by its content)")
    try:
        pixels, body_part = dicom_header(data) if kind == "dicom" else (image_pixels(data, kind), "")
        if pixels > max_pixels:
            return Refusal(
                422,
                "too_many_pixels",
                f"{name} has {pixels:,} pixels, more than serve.limits.max_pixels={max_pixels:,}: send it smaller",
            )
        gray = read_dicom(io.BytesIO(data), name=name) if kind == "dicom" else read_image(data, kind)
    except ImageDecodeError as err:
        return Refusal(422, "unreadable_image", str(err))
    except Exception as err:  # decoders raise many types on malformed input; each is this file's fault
        return Refusal(422, "unreadable_image", f"cannot decode {kind} {name}: {type(err).__name__}: {err}")
    return Upload(name, kind, gray, body_part)


def image_pixels(data: bytes, kind: str) -> int:
    """Width x height of a PNG or JPEG from its header, without decoding its pixels."""
    with Image.open(io.BytesIO(data), formats=[kind.upper()]) as image:
        return image.width * image.height


def read_image(data: bytes, kind: str) -> np.ndarray:
    """The (H, W) uint8 array of a PNG or JPEG, as `read_grayscale` gives it for a file."""
    with Image.open(io.BytesIO(data), formats=[kind.upper()]) as image:
        image.load()
        return to_grayscale(image)


def dicom_header(data: bytes) -> tuple[int, str]:
    """Rows x columns x frames of a DICOM, and the MURA body part its BodyPartExamined names ("" if none), from
    its header, without reading its pixel data."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    frames = int(dataset.get("NumberOfFrames") or 1)
    pixels = int(dataset.get("Rows") or 0) * int(dataset.get("Columns") or 0) * max(frames, 1)
    examined = str(dataset.get("BodyPartExamined") or "").strip().lower()
    return pixels, examined if examined in BODY_PARTS else ""
