"""DICOM radiographs decode to the same 8-bit grayscale PNGs give; unsupported DICOMs are refused clearly."""

from __future__ import annotations

import sys

import numpy as np
import pydicom
import pytest
from helpers.dicoms import write_dicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from mura_lightning.data.dicom import DicomSupportMissingError, is_dicom, read_dicom, sop_instance_uid
from mura_lightning.data.images import ImageDecodeError, is_radiograph, read_grayscale

RNG = np.random.default_rng(0)


def window(values, center, width, low, high):
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window over the output range [low, high], mapped to 0-255."""
    center, width = center - 0.5, width - 1
    out = ((values - center) / width + 0.5) * (high - low) + low
    out = np.where(values <= center - width / 2, low, np.where(values > center + width / 2, high, out))
    return np.rint((out - low) / (high - low) * 255).astype(np.uint8)


def bundled(name):
    """A test file shipped inside the pydicom package (no download: the tests run offline)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


@pytest.fixture
def twelve_bit():
    return RNG.integers(0, 4096, size=(24, 32), dtype=np.uint16)


def test_eight_bit_monochrome2_is_read_unchanged(tmp_path):
    pixels = RNG.integers(0, 256, size=(20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(read_grayscale(write_dicom(tmp_path / "a.dcm", pixels)), pixels)


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path, twelve_bit):
    mono2 = read_grayscale(write_dicom(tmp_path / "m2.dcm", twelve_bit, "MONOCHROME2", 12))
    mono1 = read_grayscale(write_dicom(tmp_path / "m1.dcm", twelve_bit, "MONOCHROME1", 12))
    np.testing.assert_array_equal(mono2, np.rint(twelve_bit / 4095 * 255).astype(np.uint8))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_sixteen_bit_without_window_matches_a_sixteen_bit_png(tmp_path):
    pixels = RNG.integers(0, 65536, size=(16, 16), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "w.png")
    from_dicom = read_grayscale(write_dicom(tmp_path / "w.dcm", pixels))
    np.testing.assert_array_equal(from_dicom, read_grayscale(tmp_path / "w.png"))
    assert from_dicom.dtype == np.uint8 and from_dicom.shape == pixels.shape


def test_window_applies_after_rescale_slope_and_intercept(tmp_path):
    pixels = RNG.integers(0, 2000, size=(24, 24), dtype=np.uint16)
    path = write_dicom(
        tmp_path / "ct.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=500, WindowWidth=2000
    )
    values = pixels * 2.0 - 1024
    expected = window(values, 500, 2000, -1024, 65535 * 2 - 1024)
    decoded = read_grayscale(path)
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.min() == 0 and decoded.max() == 255


def test_window_centre_and_width_on_twelve_bits(tmp_path, twelve_bit):
    path = write_dicom(tmp_path / "w.dcm", twelve_bit, bits_stored=12, WindowCenter=2000, WindowWidth=1000)
    np.testing.assert_array_equal(read_grayscale(path), window(twelve_bit.astype(float), 2000, 1000, 0, 4095))


def test_voi_lut_sequence_is_applied(tmp_path, twelve_bit):
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 12])
    lut.add_new("LUTData", "US", list(range(4095, -1, -1)))
    path = write_dicom(tmp_path / "lut.dcm", twelve_bit, bits_stored=12, VOILUTSequence=[lut])
    np.testing.assert_array_equal(read_grayscale(path), np.rint((4095 - twelve_bit) / 4095 * 255).astype(np.uint8))


def test_rle_compressed_decodes_like_uncompressed(tmp_path, twelve_bit):
    options = {"bits_stored": 12, "WindowCenter": 1500, "WindowWidth": 3000}
    plain = read_grayscale(write_dicom(tmp_path / "plain.dcm", twelve_bit, **options))
    rle = read_grayscale(write_dicom(tmp_path / "rle.dcm", twelve_bit, compress=RLELossless, **options))
    np.testing.assert_array_equal(rle, plain)


def test_bundled_ct_without_window_maps_the_full_signed_range():
    dataset = pydicom.dcmread(bundled("CT_small.dcm"))
    assert (dataset.PixelRepresentation, dataset.BitsStored, dataset.RescaleIntercept) == (1, 16, -1024)
    expected = np.rint((dataset.pixel_array.astype(float) + 32768) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_grayscale(bundled("CT_small.dcm")), expected)


@pytest.mark.parametrize("variant", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_bundled_windowed_mr_and_its_compressed_copies(variant):
    dataset = pydicom.dcmread(bundled("MR_small.dcm"))
    expected = window(dataset.pixel_array.astype(float), 600, 1600, -32768, 32767)
    np.testing.assert_array_equal(read_grayscale(bundled("MR_small.dcm")), expected)
    np.testing.assert_array_equal(read_grayscale(bundled(variant)), expected)


def test_multi_frame_is_refused(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", RNG.integers(0, 256, size=(2, 8, 8), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=f"{path}: it has 2 frames.*single-frame.*its own file"):
        read_grayscale(path)


@pytest.mark.parametrize("source", ["written", "SC_rgb_small_odd.dcm", "examples_palette.dcm"])
def test_colour_is_refused(tmp_path, source):
    if source == "written":
        path = write_dicom(tmp_path / "rgb.dcm", RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
    else:
        path = bundled(source)
    with pytest.raises(ImageDecodeError, match="colour image.*only grayscale radiographs.*Export"):
        read_grayscale(path)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, MPEG2MPML])
def test_undecodable_compressed_pixel_data_is_refused(tmp_path, syntax):
    path = write_dicom(tmp_path / "bad.dcm", RNG.integers(0, 256, size=(8, 8), dtype=np.uint8))
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path)
    with pytest.raises(ImageDecodeError, match=rf"{path}: its pixel data .*cannot be decoded.*mura-lightning\[dicom\]"):
        read_grayscale(path)


def test_truncated_and_pixelless_files_are_refused():
    with pytest.raises(ImageDecodeError, match="MR_truncated.dcm.*cannot be decoded.*damaged"):
        read_grayscale(bundled("MR_truncated.dcm"))
    with pytest.raises(ImageDecodeError, match="rtplan.dcm.*no pixel data"):
        read_grayscale(bundled("rtplan.dcm"))


def test_a_dcm_that_is_not_dicom_names_its_path(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(ImageDecodeError, match=f"{bad}: not a readable DICOM file"):
        read_grayscale(bad)


def test_dicom_is_recognised_by_suffix_or_preamble(tmp_path):
    pixels = RNG.integers(0, 256, size=(8, 8), dtype=np.uint8)
    no_suffix = write_dicom(tmp_path / "IM0001", pixels)
    Image.fromarray(pixels).save(tmp_path / "image1.png")
    (tmp_path / "notes.txt").write_text("x" * 200)
    assert is_dicom(no_suffix) and is_dicom(tmp_path / "missing.DCM")
    assert not is_dicom(tmp_path / "image1.png") and not is_dicom(tmp_path / "notes.txt")
    assert not is_dicom(tmp_path / "missing")
    np.testing.assert_array_equal(read_grayscale(no_suffix), pixels)
    assert is_radiograph(no_suffix) and is_radiograph(tmp_path / "image1.png")
    assert not is_radiograph(tmp_path / "notes.txt")
    hidden = tmp_path / "._IM0001"
    hidden.write_bytes(no_suffix.read_bytes())
    assert not is_radiograph(hidden)


def test_sop_instance_uid_is_read_from_the_header(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), SOPInstanceUID=(uid := generate_uid()))
    assert sop_instance_uid(path) == uid
    assert sop_instance_uid(bundled("MR_truncated.dcm"))  # the header is readable though the pixels are not


def test_missing_pydicom_names_the_extra_only_when_a_dicom_is_read(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "pydicom.pixels", None)
    read_grayscale(tmp_path / "a.png")
    with pytest.raises(DicomSupportMissingError, match=r"pip install 'mura-lightning\[dicom\]'"):
        read_dicom(path)
    with pytest.raises(DicomSupportMissingError):
        sop_instance_uid(path)
