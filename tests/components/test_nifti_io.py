import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from benchmarks.fuzz_upload import header_bomb
from components.data.nifti_io import (
    InvalidVolumeError, VolumeLimits, load_volume, save_volume, volume_from_bytes, volume_to_bytes,
)


def nifti_bytes(data: np.ndarray, affine=np.eye(4)) -> bytes:
    return nib.Nifti1Image(data, affine).to_bytes()


def test_roundtrip_keeps_data_and_affine(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    loaded, loaded_affine = load_volume(save_volume(data, affine, tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(loaded, data)
    np.testing.assert_allclose(loaded_affine, affine)


def test_bytes_roundtrip_gzipped_and_plain():
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    for payload in (volume_to_bytes(data, np.eye(4)), nifti_bytes(data)):
        parsed, _ = volume_from_bytes(payload)
        np.testing.assert_array_equal(parsed, data)


def test_float32_voxels_are_read_in_place_and_other_encodings_through_nibabel():
    data = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    plain = nifti_bytes(data)
    parsed, _ = volume_from_bytes(plain)
    assert np.array_equal(parsed, data)
    assert np.shares_memory(parsed, np.frombuffer(plain, np.uint8))  # a view of the upload's bytes, no copy
    big_endian = nib.Nifti1Image(data, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    scaled = nib.Nifti1Image(data, np.eye(4))
    scaled.header.set_slope_inter(2.0, 1.0)
    for image, expected in ((big_endian, data), (scaled, data * 2 + 1)):
        image_bytes = image.to_bytes()
        parsed, _ = volume_from_bytes(image_bytes)
        assert parsed.dtype == np.float32 and not np.shares_memory(parsed, np.frombuffer(image_bytes, np.uint8))
        np.testing.assert_allclose(parsed, expected, rtol=1e-6)


def test_single_frame_4d_is_accepted():
    parsed, _ = volume_from_bytes(nifti_bytes(np.ones((4, 4, 4, 1), np.float32)))
    assert parsed.shape == (4, 4, 4)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"definitely not a nifti file" * 20, "not a NIfTI"),
        (b"short", "too short"),
        (gzip.compress(nifti_bytes(np.random.default_rng(0).random((8, 8, 8), np.float32)))[:900], "truncated or corrupt"),
        (nifti_bytes(np.ones((8, 8), np.float32)), "expected a 3-D volume"),
        (nifti_bytes(np.ones((4, 4, 4, 2, 2), np.float32)), "expected a 3-D volume"),
        (nifti_bytes(np.full((4, 4, 4), np.nan, np.float32)), "NaN or infinite"),
        (nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([1.0, 1e-3, 100.0, 1.0])).to_bytes(), "voxel sizes"),
        (nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([1.0, 1.0, 1e6, 1.0])).to_bytes(), "outside 0.05-50"),
    ],
    ids=["garbage", "too-short", "truncated-gzip", "2d", "5d", "nan", "nanometre-voxels", "kilometre-voxels"],
)
def test_bad_uploads_are_named(payload, message):
    with pytest.raises(InvalidVolumeError, match=message):
        volume_from_bytes(payload)


def test_gzip_bomb_is_bounded():
    bomb = gzip.compress(nifti_bytes(np.zeros((128, 128, 128), np.float32)))
    with pytest.raises(InvalidVolumeError, match="decompresses to more than"):
        volume_from_bytes(bomb, max_uncompressed_bytes=1 << 20)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InvalidVolumeError, match="bad.nii.gz: the gzip stream is truncated or corrupt"):
        load_volume(tmp_path / "bad.nii.gz")


def test_a_gzipped_file_loads_writable_and_as_nibabel_reads_it(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    path = save_volume(data, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "v.nii.gz")
    loaded, affine = load_volume(path)
    assert loaded.flags.writeable  # callers may normalise in place, unlike an upload's read-only view
    np.testing.assert_array_equal(loaded, np.asarray(nib.load(path).dataobj))
    np.testing.assert_array_equal(affine, nib.load(path).affine)


@pytest.mark.parametrize("shape, message", [
    ((400, 400, 400), "claims .* but 16 bytes of image data follow it"),  # under the caps: the bytes give it away
    ((1024, 1024, 1000), "over the limit of"),
    ((4096, 2, 2), "longer than 1024 voxels"),
], ids=["claims-more-than-sent", "too-many-voxels", "too-long-an-axis"])
def test_a_header_bomb_is_refused_before_its_voxels_are_allocated(shape, message):
    """A few dozen gzipped bytes once claimed 4 GB, and nibabel allocated it before finding the data missing."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidVolumeError, match=message):
            volume_from_bytes(header_bomb(shape, b"\0" * 16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a {len(header_bomb(shape))}-byte upload"


@pytest.mark.parametrize("name, gzipped", [("claims.nii", False), ("claims.nii.gz", True)])
def test_a_truncated_file_on_disk_is_refused_unread(tmp_path, name, gzipped):
    bomb = header_bomb((400, 400, 400), b"\0" * 16)
    path = tmp_path / name
    path.write_bytes(bomb if gzipped else gzip.decompress(bomb))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidVolumeError, match="but 16 bytes of image data follow it"):
            load_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a {len(bomb)}-byte file"


def test_the_caps_are_settings():
    payload = nifti_bytes(np.ones((8, 8, 8), np.float32))
    assert volume_from_bytes(payload, limits=VolumeLimits(max_voxels=512))[0].shape == (8, 8, 8)
    with pytest.raises(InvalidVolumeError, match="over the limit of 511"):
        volume_from_bytes(payload, limits=VolumeLimits(max_voxels=511))
    with pytest.raises(InvalidVolumeError, match="longer than 7 voxels"):
        volume_from_bytes(payload, limits=VolumeLimits(max_axis=7))
