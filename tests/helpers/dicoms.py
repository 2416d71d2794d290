"""DICOM files written for tests: a CR radiograph of given pixels, with any header elements."""

from __future__ import annotations

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, compress=None, **elements):
    """Write `pixels` as a CR DICOM file (preamble, file meta) with extra header `elements`; return the path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = ComputedRadiographyImageStorage
    dataset.Modality = "CR"
    dataset.set_pixel_data(pixels, photometric, bits_stored or pixels.itemsize * 8)
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for name, value in elements.items():
        setattr(dataset, name, value)
    if compress is not None:
        dataset.compress(compress)
    dataset.save_as(path, enforce_file_format=True)
    return path
