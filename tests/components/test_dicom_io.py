import io
import zipfile
from typing import NamedTuple

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from components.data.dicom_io import (
    Derived, DicomSource, InvalidSeriesError, files_from_zip, is_dicom, parametric_map, read_series, segmentation, series_zip,
    volume_to_series,
)
from components.data.nifti_io import VolumeLimits
from components.errors import InvalidVolumeError

SECRET = "Doe^Jane"  # a patient's name: never in a message
TILT = np.deg2rad(12)  # an oblique acquisition: tilted 12 degrees about the left-right axis
OBLIQUE = np.array([[-1, 0, 0, 80], [0, np.cos(TILT), -np.sin(TILT), -100], [0, np.sin(TILT), np.cos(TILT), -60],
                    [0, 0, 0, 1]]) @ np.diag([1.2, 1.1, 2.5, 1])


def phantom(shape=(40, 44, 18)) -> np.ndarray:
    return (np.random.default_rng(0).random(shape) * 900 + 100).astype(np.float32)


def edited(files: list[bytes], change) -> list[bytes]:
    """``files`` with ``change(index, dataset)`` applied to each, written back."""
    out = []
    for index, data in enumerate(files):
        image = pydicom.dcmread(io.BytesIO(data))
        change(index, image)
        buffer = io.BytesIO()
        image.save_as(buffer)
        out.append(buffer.getvalue())
    return out


class Read(NamedTuple):
    data: np.ndarray
    affine: np.ndarray
    source: DicomSource


def read(files: list[bytes], **limits) -> Read:
    return Read(*read_series(files_from_zip(series_zip(files), 1 << 30, 1024), VolumeLimits(**limits)))


def world_canonical(data, affine):
    image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return image.get_fdata(), image.affine


def test_a_series_reads_back_as_the_volume_it_was_written_from():
    data = phantom()
    series = read(volume_to_series(data, OBLIQUE))
    got, got_affine = world_canonical(series.data, series.affine)
    want, want_affine = world_canonical(data, OBLIQUE)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)
    np.testing.assert_allclose(got, want, atol=900 / 65535)  # the 16-bit rescale's step
    assert series.data.dtype == np.float32 and len(series.source.headers) == 18
    assert all("PixelData" not in header for header in series.source.headers)


def test_file_order_in_the_upload_does_not_matter():
    files = volume_to_series(phantom(), OBLIQUE)
    np.testing.assert_array_equal(read(files).data, read(files[::-1]).data)


def test_the_rescale_slope_and_intercept_are_applied():
    files = edited(volume_to_series(phantom(), OBLIQUE), lambda _, image: setattr(image, "RescaleIntercept", "5000"))
    assert read(files).data.min() >= 5000


def test_magic_bytes_tell_dicom_from_nifti():
    files = volume_to_series(phantom(), OBLIQUE)
    assert is_dicom(files[0]) and is_dicom(series_zip(files))
    assert not is_dicom(nib.Nifti1Image(phantom(), OBLIQUE).to_bytes())


def named(files, keyword, value):
    return edited(files, lambda _, image: setattr(image, keyword, value))


@pytest.mark.parametrize("damage, message", [
    (lambda f: f[:5] + f[6:], r"1 gap\(s\) wider than the usual 2.5 mm"),
    (lambda f: f + f[:1], "sent twice"),
    (lambda f: named(f, "Modality", "CT"), "modality CT, not MR"),
    (lambda f: f[:9] + volume_to_series(phantom(), OBLIQUE, series_number=7)[9:], r"2 series \(series numbers 1, 7\)"),
    (lambda f: f[:1], "a single image is not a volume"),
    (lambda f: f[:3] + [b"not dicom at all" * 20] + f[4:], "file 4 of the zip is not a DICOM file"),
    (lambda f: f[:2] + [f[2][:400]] + f[3:], "file 3 of the zip"),
    (lambda f: edited(f, lambda i, image: setattr(image, "Rows", 40 if i else 20)), "differ in Rows"),
    (lambda f: edited(f, lambda i, image: delattr(image, "PixelData") if i == 4 else None), "no pixel data"),
    (lambda f: named(f, "PixelSpacing", [0.001, 0.001]), "voxel sizes"),
])
def test_a_bad_series_is_refused_with_the_reason_and_no_identifier(damage, message):
    files = named(volume_to_series(phantom(), OBLIQUE), "PatientName", SECRET)
    with pytest.raises(InvalidSeriesError, match=message) as refused:
        read(damage(files))
    assert "Doe" not in str(refused.value) and "Jane" not in str(refused.value)


def test_a_grid_past_the_limits_is_refused_before_its_pixels_are_decoded():
    with pytest.raises(InvalidVolumeError, match="holds 31,680 voxels, over the limit of 1,000"):
        read(volume_to_series(phantom(), OBLIQUE), max_voxels=1000)


def test_a_zip_is_bounded_in_files_and_in_inflated_size():
    archive = series_zip(volume_to_series(phantom(), OBLIQUE))
    with pytest.raises(InvalidSeriesError, match="over the limit of 10 images"):
        files_from_zip(archive, 1 << 30, max_files=10)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("a.dcm", b"\0" * (8 << 20))
    with pytest.raises(InvalidSeriesError, match="inflates to more than 1 MiB"):
        files_from_zip(bomb.getvalue(), 1 << 20, 1024)
    with pytest.raises(InvalidSeriesError, match="not a readable zip"):
        files_from_zip(b"PK\x03\x04" + b"\0" * 100, 1 << 20, 1024)


def test_folders_and_os_metadata_in_a_zip_are_skipped():
    files = volume_to_series(phantom(), OBLIQUE)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("series/", b"")
        zipped.writestr("__MACOSX/series/._IM1.dcm", b"apple")
        zipped.writestr("series/.DS_Store", b"finder")
        zipped.writestr("series/DICOMDIR", b"index")
        for number, data in enumerate(files):
            zipped.writestr(f"series/IM{number}.dcm", data)
    assert [name for name, _ in files_from_zip(buffer.getvalue(), 1 << 30, 1024)][-1] == f"file {len(files)} of the zip"


DERIVED = Derived("denoising_ae", "3", "anomalous: volume score 1.20 > 0.90")


def test_the_segmentation_lands_on_the_source_series():
    source = read(volume_to_series(phantom(), OBLIQUE))
    mask = source.data > 800
    seg = hd.seg.segread(io.BytesIO(segmentation(source.source, mask, DERIVED)))
    first = source.source.headers[0]
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (first.StudyInstanceUID, first.FrameOfReferenceUID)
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert referenced == {header.SOPInstanceUID for header in source.source.headers}
    assert seg.ContentDescription == DERIVED.description
    assert seg.get_segment_description(1).SegmentLabel == "anomaly"
    volume = seg.get_volume(combine_segments=True)
    np.testing.assert_allclose(volume.affine, source.source.geometry.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array.astype(bool), mask)


def test_a_normal_scan_gets_an_empty_segmentation_with_every_frame():
    source = read(volume_to_series(phantom(), OBLIQUE))
    seg = hd.seg.segread(io.BytesIO(segmentation(source.source, np.zeros(source.data.shape, bool), DERIVED)))
    assert seg.NumberOfFrames == len(source.source.headers)


def test_the_parametric_map_carries_the_values_over_the_source_grid():
    source = read(volume_to_series(phantom(), OBLIQUE))
    values = source.data / 1000
    pmap = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(parametric_map(source.source, values, DERIVED, 0.5))))
    assert pmap.FrameOfReferenceUID == source.source.headers[0].FrameOfReferenceUID
    volume = pmap.get_volume()
    np.testing.assert_allclose(volume.affine, source.source.geometry.affine, atol=1e-4)
    np.testing.assert_allclose(volume.array, values, rtol=1e-6)
