"""Geometric steps: canonical orientation, resampling, slice selection, crop and resize."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage


def axial_axis(affine: np.ndarray) -> int:
    """The input voxel axis closest to the world's inferior-superior direction."""
    return int(np.flatnonzero(nib.orientations.io_orientation(affine)[:, 0] == 2)[0])


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxel axes to RAS (axis 2 = inferior->superior). Returns (data, input_axial_index).

    ``input_axial_index[k]`` is the input file's own index of RAS axial slice k. The data is a
    copy in the input's own memory order: NIfTI's voxels lie in F order, and turning them into C
    order costs a transposing copy several times as slow, for the same values.
    """
    ornt = nib.orientations.io_orientation(affine)
    axis = axial_axis(affine)
    index = np.arange(data.shape[axis])
    ras = nib.orientations.apply_orientation(data, ornt)
    return ras.copy(order="K"), (index[::-1] if ornt[axis, 1] < 0 else index).copy()


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the RAS axes (R, A, S) of a volume with this affine."""
    ornt = nib.orientations.io_orientation(affine)
    sizes = nib.affines.voxel_sizes(affine)
    return tuple(float(sizes[int(np.flatnonzero(ornt[:, 0] == axis)[0])]) for axis in range(3))


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target_mm: float) -> tuple[int, ...]:
    """The shape of a volume of ``spacing`` mm voxels once resampled to ``target_mm``."""
    return tuple(max(1, int(round(n * (s / target_mm)))) for n, s in zip(shape, spacing))


def resample(volume: np.ndarray, spacing: tuple[float, ...], target_mm: float, order: int) -> np.ndarray:
    """Resample a RAS volume to isotropic ``target_mm`` voxels (order 3 = cubic, 0 = nearest)."""
    shape = resampled_shape(volume.shape, spacing, target_mm)
    source = volume.astype(np.float32) if volume.dtype == bool else volume
    return ndimage.zoom(source, [n / m for n, m in zip(shape, volume.shape)], order=order, grid_mode=True, mode="nearest")


def select_slices(brain: np.ndarray, min_fraction: float, middle: int | None = None) -> np.ndarray:
    """Axial slices (last axis) whose brain area >= min_fraction x the largest one's, restricted
    to the ``middle`` slices centred on the brain's axial extent when given."""
    area = brain.sum(axis=(0, 1))
    keep = area >= max(min_fraction * area.max(), 1)
    if middle is not None:
        present = np.flatnonzero(area)
        start = int(np.floor((present[0] + present[-1] + 1 - middle) / 2))
        window = np.zeros_like(keep)
        window[max(start, 0) : max(start + middle, 0)] = True
        keep &= window
    return np.flatnonzero(keep)


def square_box(brain: np.ndarray, spacing: tuple[float, float], side_mm: float | None = None) -> tuple[slice, slice]:
    """An in-plane square (in millimetres, so anisotropic voxels are not stretched) centred on
    the brain's bounding box over all slices: the box itself widened to a square, or a fixed
    ``side_mm``. It may reach past the array (crop_resize pads)."""
    rows, cols = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    if side_mm is None:
        side_mm = max((rows[-1] - rows[0] + 2) * spacing[0], (cols[-1] - cols[0] + 2) * spacing[1])
    return tuple(
        slice(int(np.floor(c - side_mm / 2 / mm)), int(np.ceil(c + side_mm / 2 / mm)) + 1) for c, mm in zip(centre, spacing)
    )


def crop_resize(stack: np.ndarray, box: tuple[slice, slice], size: int, order: int, fill: float = 0.0) -> np.ndarray:
    """Crop (X, Y, N) to ``box`` (``fill`` outside the array), resize to (N, size, size)."""
    pads = [(max(0, -b.start), max(0, b.stop - n)) for b, n in zip(box, stack.shape[:2])]
    padded = stack.astype(np.float32, copy=False)
    if any(map(any, pads)):
        padded = np.pad(padded, pads + [(0, 0)], constant_values=fill)
    crop = padded[box[0].start + pads[0][0] : box[0].stop + pads[0][0], box[1].start + pads[1][0] : box[1].stop + pads[1][0]]
    zoom = (size / crop.shape[0], size / crop.shape[1], 1.0)
    resized = ndimage.zoom(crop, zoom, order=order, grid_mode=True, mode="grid-constant", cval=fill)
    return np.moveaxis(resized[:size, :size], 2, 0)


def linear_resize_reads(box: slice, size: int, length: int) -> np.ndarray:
    """The indices in [0, ``length``) of the voxels along one axis that ``crop_resize`` to ``size``
    px with order 1 weighs from the crop ``box`` (which may pass the array's ends): the voxel at
    or below each sample position, and the next where the position falls between two. Any other
    voxel may hold any finite value: the resize weighs it by exactly nothing. The positions are
    ndimage.zoom's own (grid mode), computed with the same float operations."""
    positions = (np.arange(size, dtype=np.float64) + 0.5) * ((box.stop - box.start) / size) - 0.5
    below = np.floor(positions)
    read = np.unique(np.concatenate([below, below[positions > below] + 1])).astype(int) + box.start
    return read[(read >= max(0, box.start)) & (read < min(box.stop, length))]


RAS = nib.orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class SliceGeometry:
    """Where a volume's model slices came from, so that per-slice maps can be put back on the
    input's own voxel grid (and open aligned over the scan with the input's affine).

    input_shape:     (X, Y, Z) of the input file
    orientation:     nibabel orientation taking the input's axes to RAS
    ras_shape:       the RAS volume's shape before resampling
    resampled_shape: its shape after resampling (= ras_shape when not resampled)
    kept:            the resampled volume's axial indices of the model slices, in order
    box:             the in-plane crop of the resampled volume, before the resize
    spacing_mm:      (slice, pixel) spacing of the model slices: between slices, and of a pixel
                     of the resized crop
    """

    input_shape: tuple[int, int, int]
    orientation: np.ndarray
    ras_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    kept: np.ndarray
    box: tuple[slice, slice]
    spacing_mm: tuple[float, float]


def to_input_grid(maps: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """(N, S, S) slice maps -> an (X, Y, Z) float32 volume on the input's grid, the inverse of
    the crop/resize, the resampling and the reorientation; 0 where no slice was scored."""
    crop = tuple(b.stop - b.start for b in geometry.box)
    stack = ndimage.zoom(np.moveaxis(maps.astype(np.float32), 0, 2), (crop[0] / maps.shape[1], crop[1] / maps.shape[2], 1),
                         order=1, grid_mode=True, mode="nearest")
    volume = np.zeros(geometry.resampled_shape, np.float32)
    inside = [slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(geometry.box, geometry.resampled_shape[:2])]
    within = [slice(i.start - b.start, i.stop - b.start) for i, b in zip(inside, geometry.box)]
    volume[inside[0], inside[1], geometry.kept] = stack[within[0], within[1]]
    if geometry.ras_shape != geometry.resampled_shape:
        zoom = [n / m for n, m in zip(geometry.ras_shape, geometry.resampled_shape)]
        volume = ndimage.zoom(volume, zoom, order=1, grid_mode=True, mode="nearest")
    back = nib.orientations.ornt_transform(RAS, geometry.orientation)
    return np.ascontiguousarray(nib.orientations.apply_orientation(volume, back))
