"""Decoding every PNG flavour into one grayscale channel, and clear errors for broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mura_lightning.data.images import ImageDecodeError, read_grayscale


@pytest.fixture
def gray():
    return np.random.default_rng(0).integers(0, 256, size=(30, 40), dtype=np.uint8)


def test_grayscale_png_is_read_unchanged(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_grayscale(tmp_path / "g.png"), gray)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_and_palette_pngs_become_the_same_gray(tmp_path, gray, mode):
    Image.fromarray(gray).convert(mode).save(tmp_path / "c.png")
    decoded = read_grayscale(tmp_path / "c.png")
    assert decoded.shape == gray.shape and decoded.dtype == np.uint8
    np.testing.assert_allclose(decoded.astype(int), gray.astype(int), atol=1)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    wide = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    decoded = read_grayscale(tmp_path / "w.png")
    np.testing.assert_array_equal(decoded, np.rint(wide / 257.0).astype(np.uint8))
    assert decoded.max() == 255 and len(np.unique(decoded)) == 8


def test_corrupt_file_names_its_path(tmp_path):
    bad = tmp_path / "image1.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageDecodeError, match=f"cannot decode image {bad}.*Replace or remove the file"):
        read_grayscale(bad)


def test_truncated_png_names_its_path(tmp_path, gray):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.tile(gray, (8, 8))).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match=str(cut)):
        read_grayscale(cut)


def test_missing_file_names_its_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="nothere.png"):
        read_grayscale(tmp_path / "nothere.png")
