"""Reading and writing NIfTI volumes with nibabel, with errors a user can act on.

A volume is returned as ``(data, affine)``: ``data`` is a 3-D float32 array in the file's own
voxel order, ``affine`` the 4x4 voxel-to-world (RAS+ mm) matrix of the header.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib  # gzip's interface on ISA-L: twice zlib's speed on a scan

from components.atomic import atomic_path
from components.errors import InvalidVolumeError


VOXEL_MM = (0.05, 50.0)  # a scanner's voxels, from small-animal MRI to thick clinical slices
MAX_INFLATED_BYTES = 1 << 30  # what a gzipped volume may decompress to: a 512 x 512 x 256 float64 scan is half


@dataclass(frozen=True)
class VolumeLimits:
    """What one volume may cost, checked on its header before a voxel is read (nibabel allocates
    what the header claims before it finds the data missing)."""

    max_voxels: int = 2**26  # 67 M voxels, 256 MiB as float32: a 512 x 512 x 256 scan
    max_axis: int = 1024

    def check(self, shape: tuple[int, ...], name: str, what: str = "volume shape") -> None:
        if max(shape) > self.max_axis:
            raise InvalidVolumeError(f"{name}: {what} {tuple(shape)} has an axis longer than {self.max_axis} voxels")
        if math.prod(shape) > self.max_voxels:
            raise InvalidVolumeError(
                f"{name}: {what} {tuple(shape)} holds {math.prod(shape):,} voxels, over the limit of {self.max_voxels:,}")


def _check_image(img: nib.Nifti1Image, name: str, limits: VolumeLimits, data_bytes: int | None = None,
                 payload: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``data_bytes``: the image data actually present after the header, where known;
    ``payload``: the whole file in memory, where it is (its voxels may then be read in place)."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidVolumeError(
            f"{name}: expected a 3-D volume, got {len(img.shape)}-D data of shape {img.shape}"
        )
    if min(shape) < 2:
        raise InvalidVolumeError(f"{name}: volume shape {img.shape} has an axis shorter than 2")
    limits.check(shape, name)
    claimed = math.prod(shape) * img.get_data_dtype().itemsize
    if data_bytes is not None and claimed > data_bytes:
        raise InvalidVolumeError(f"{name}: the header claims {shape} {img.get_data_dtype()} voxels "
                                 f"({claimed:,} bytes) but {max(data_bytes, 0):,} bytes of image data follow it")
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
        data = _voxels(img.dataobj, shape, payload)
    except Exception as err:  # truncated data, or a data type, offset or scaling no reader can use
        raise InvalidVolumeError(f"{name}: the image data is truncated or unreadable ({err})") from err
    check_finite(data, name)
    return data, affine.astype(np.float64)


def check_finite(data: np.ndarray, name: str) -> None:
    """Refuse a volume with NaN or infinite voxels, saying how many."""
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InvalidVolumeError(f"{name}: {bad} voxels are NaN or infinite")


def _voxels(proxy: nib.arrayproxy.ArrayProxy, shape: tuple[int, ...], payload: bytes | None) -> np.ndarray:
    """The voxels as float32: unscaled native float32 ones in memory as a read-only view of the
    file's bytes (a BraTS-sized volume's 36 MB not copied), any others through nibabel."""
    if (payload is not None and proxy.dtype == np.dtype(np.float32) and proxy.slope == 1 and proxy.inter == 0
            and proxy.order == "F"):
        return np.frombuffer(payload, np.float32, math.prod(shape), proxy.offset).reshape(shape, order="F")
    return np.asarray(proxy, dtype=np.float32).reshape(shape)


def _data_bytes(img: nib.Nifti1Image, size: int) -> int:
    """Bytes after the header and its extensions, in a single-file NIfTI of ``size`` bytes."""
    return size - max(int(img.header["vox_offset"]), img.header.single_vox_offset)


def load_volume(path: str | Path, limits: VolumeLimits = VolumeLimits()) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3-D NIfTI file (.nii or .nii.gz) as (float32 data, 4x4 affine), the data writable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    with path.open("rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
    if compressed:  # inflated by ISA-L in memory and bounded, as an upload is, not by nibabel's zlib
        return _parse(_gunzip_bounded(path.read_bytes(), str(path), MAX_INFLATED_BYTES), str(path), limits,
                      in_place=False)
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a bad header
        raise InvalidVolumeError(f"{path}: not a readable NIfTI file ({err})") from err
    return _check_image(img, str(path), limits, _data_bytes(img, path.stat().st_size))


def volume_from_bytes(
    payload: bytes, *, name: str = "upload", max_uncompressed_bytes: int = MAX_INFLATED_BYTES,
    limits: VolumeLimits = VolumeLimits(),
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an uploaded .nii or .nii.gz body as (float32 data, 4x4 affine).

    Gzip is detected from its magic bytes, decompressed with a bound (so a small upload cannot
    expand without limit) and parsed in memory: nothing is written to disk. A header that claims
    more voxels than ``limits`` allow or than the bytes that follow it is refused unread.
    """
    if payload[:2] == b"\x1f\x8b":
        payload = _gunzip_bounded(payload, name, max_uncompressed_bytes)
    return _parse(payload, name, limits)


def _parse(payload: bytes, name: str, limits: VolumeLimits, in_place: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A whole single-file NIfTI in memory as (float32 data, affine); ``in_place``: native float32
    voxels come back as a read-only view of ``payload``, else as a writable copy."""
    if len(payload) < 348:
        raise InvalidVolumeError(f"{name}: {len(payload)} bytes is too short for a NIfTI header (348)")
    try:
        img = nib.Nifti1Image.from_bytes(payload)
    except Exception:
        try:
            img = nib.Nifti2Image.from_bytes(payload)
        except Exception as err:
            raise InvalidVolumeError(f"{name}: not a NIfTI-1 or NIfTI-2 file ({err})") from err
    data, affine = _check_image(img, name, limits, _data_bytes(img, len(payload)), payload)
    return (data if in_place or data.flags.writeable else data.copy()), affine


def _gunzip_bounded(payload: bytes, name: str, limit: int) -> bytes:
    reader, data = igzip.GzipFile(fileobj=io.BytesIO(payload)), io.BytesIO()
    try:  # in 1 MiB blocks: read(limit) would reserve the whole limit up front
        while block := reader.read(2**20):
            if data.write(block) and data.tell() > limit:
                raise InvalidVolumeError(f"{name}: decompresses to more than {limit // 2**20} MiB")
    except (EOFError, OSError, isal_zlib.error) as err:
        raise InvalidVolumeError(f"{name}: the gzip stream is truncated or corrupt ({err})") from err
    return data.getvalue()


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
    return igzip.compress(img.to_bytes(), compresslevel=3)
