"""Reading and writing NIfTI volumes with nibabel, with errors a user can act on.

A volume is returned as ``(data, affine)``: ``data`` is a 3-D float32 array in the file's own
voxel order, ``affine`` the 4x4 voxel-to-world (RAS+ mm) matrix of the header.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from components.atomic import atomic_path


VOXEL_MM = (0.05, 50.0)  # a scanner's voxels, from small-animal MRI to thick clinical slices


class InvalidVolumeError(ValueError):
    """The bytes or file given are not a usable 3-D NIfTI volume; the message says why."""


def _check_image(img: nib.Nifti1Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidVolumeError(
            f"{name}: expected a 3-D volume, got {len(img.shape)}-D data of shape {img.shape}"
        )
    if min(shape) < 2:
        raise InvalidVolumeError(f"{name}: volume shape {img.shape} has an axis shorter than 2")
    try:
        affine = img.affine
    except Exception as err:  # hostile quaternion/srow values overflow nibabel's arithmetic
        raise InvalidVolumeError(f"{name}: the header's orientation fields are unreadable ({err})") from err
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-8:
        raise InvalidVolumeError(f"{name}: the header's affine is missing or not invertible")
    try:
        orientation = nib.orientations.io_orientation(affine)
    except Exception as err:
        raise InvalidVolumeError(f"{name}: the header's affine gives no voxel orientation ({err})") from err
    if np.isnan(orientation).any():
        raise InvalidVolumeError(f"{name}: the header's affine maps two voxel axes onto one direction")
    sizes = nib.affines.voxel_sizes(affine)
    if not np.all((sizes >= VOXEL_MM[0]) & (sizes <= VOXEL_MM[1])):
        raise InvalidVolumeError(
            f"{name}: voxel sizes {np.round(sizes, 4).tolist()} mm are outside {VOXEL_MM[0]}-{VOXEL_MM[1]} mm: not an MRI scan's"
        )
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:  # truncated data, or a data type, offset or scaling no reader can use
        raise InvalidVolumeError(f"{name}: the image data is truncated or unreadable ({err})") from err
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InvalidVolumeError(f"{name}: {bad} voxels are NaN or infinite")
    return data, affine.astype(np.float64)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3-D NIfTI file (.nii or .nii.gz) as (float32 data, 4x4 affine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a bad header
        raise InvalidVolumeError(f"{path}: not a readable NIfTI file ({err})") from err
    return _check_image(img, str(path))


def volume_from_bytes(
    payload: bytes, *, name: str = "upload", max_uncompressed_bytes: int = 1 << 30
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an uploaded .nii or .nii.gz body as (float32 data, 4x4 affine).

    Gzip is detected from its magic bytes, decompressed with a bound (so a small upload cannot
    expand without limit) and parsed in memory: nothing is written to disk.
    """
    if payload[:2] == b"\x1f\x8b":
        payload = _gunzip_bounded(payload, name, max_uncompressed_bytes)
    if len(payload) < 348:
        raise InvalidVolumeError(f"{name}: {len(payload)} bytes is too short for a NIfTI header (348)")
    try:
        img = nib.Nifti1Image.from_bytes(payload)
    except Exception:
        try:
            img = nib.Nifti2Image.from_bytes(payload)
        except Exception as err:
            raise InvalidVolumeError(f"{name}: not a NIfTI-1 or NIfTI-2 file ({err})") from err
    return _check_image(img, name)


def _gunzip_bounded(payload: bytes, name: str, limit: int) -> bytes:
    reader = gzip.GzipFile(fileobj=io.BytesIO(payload))
    try:
        data = reader.read(limit + 1)
    except (EOFError, OSError, zlib.error) as err:
        raise InvalidVolumeError(f"{name}: the gzip stream is truncated or corrupt ({err})") from err
    if len(data) > limit:
        raise InvalidVolumeError(f"{name}: decompresses to more than {limit // 2**20} MiB")
    return data


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``data`` with ``affine`` as NIfTI; the dtype is kept (float32, uint8 labels, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def volume_to_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Serialise a volume as gzipped NIfTI bytes (for an HTTP response)."""
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    return gzip.compress(img.to_bytes(), compresslevel=3)
