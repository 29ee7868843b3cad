"""Preprocessing of one 3-D volume into model-ready axial slices.

Steps, in order: reorient to canonical RAS; brain mask (given, the non-zero voxels of a
skull-stripped image, or an Otsu head mask otherwise); intensity scaling inside the mask; axial slice selection; crop to the
brain's in-plane bounding box, pad to square and resize. The same function runs at training
and serving time, so a served scan sees exactly what the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from components.data.nifti_io import InvalidVolumeError
from components.preprocess.brain_mask import brain_mask as compute_mask
from components.preprocess.spec import PreprocessSpec


@dataclass(frozen=True)
class ProcessedSlices:
    """Model-ready slices of one volume, N = kept axial slices.

    images:        (N, 1, S, S) float32 in [0, 1], zero outside the brain
    brain:         (N, 1, S, S) bool
    tumour:        (N, 1, S, S) bool, or None when no segmentation was given
    slice_numbers: (N,) int, each slice's index along the input file's own axial axis
    tumour_pixels: (N,) int, tumour pixels of each slice before resizing (0 without segmentation)
    brain_pixels:  (N,) int, brain pixels of each slice before resizing
    """

    images: np.ndarray
    brain: np.ndarray
    tumour: np.ndarray | None
    slice_numbers: np.ndarray
    tumour_pixels: np.ndarray
    brain_pixels: np.ndarray


def axial_axis(affine: np.ndarray) -> int:
    """The input voxel axis closest to the world's inferior-superior direction."""
    return int(np.flatnonzero(nib.orientations.io_orientation(affine)[:, 0] == 2)[0])


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxel axes to RAS (axis 2 = inferior->superior). Returns (data, input_axial_index).

    ``input_axial_index[k]`` is the input file's own index of RAS axial slice k.
    """
    ornt = nib.orientations.io_orientation(affine)
    axis = axial_axis(affine)
    index = np.arange(data.shape[axis])
    ras = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(ras), (index[::-1] if ornt[axis, 1] < 0 else index).copy()


def scale_intensity(image: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the (low, high) percentiles of the brain's intensities to 0 and 1, clip, zero outside."""
    low, high = np.percentile(image[brain], percentiles)
    if high - low <= 1e-6 * max(abs(high), 1.0):
        raise InvalidVolumeError("the brain's intensities are constant: nothing to normalise")
    return (np.clip((image - low) / (high - low), 0.0, 1.0) * brain).astype(np.float32)


def select_slices(brain: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices of axial slices (last axis) whose brain area >= min_fraction x the largest one."""
    area = brain.sum(axis=(0, 1))
    return np.flatnonzero(area >= max(min_fraction * area.max(), 1))


def in_plane_spacing(affine: np.ndarray) -> tuple[float, float]:
    """Voxel size (mm) along the RAS in-plane axes (R, A) of a volume with this affine."""
    ornt = nib.orientations.io_orientation(affine)
    sizes = nib.affines.voxel_sizes(affine)
    return tuple(float(sizes[int(np.flatnonzero(ornt[:, 0] == axis)[0])]) for axis in (0, 1))


def square_box(brain: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[slice, slice]:
    """The brain's in-plane bounding box over all slices, widened to a square in millimetres
    (so anisotropic voxels are not stretched); it may reach past the array."""
    rows, cols = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    half_mm = max((rows[-1] - rows[0] + 2) * spacing[0], (cols[-1] - cols[0] + 2) * spacing[1]) / 2
    return tuple(
        slice(int(np.floor(c - half_mm / mm)), int(np.ceil(c + half_mm / mm)) + 1) for c, mm in zip(centre, spacing)
    )


def crop_resize(stack: np.ndarray, box: tuple[slice, slice], size: int, order: int) -> np.ndarray:
    """Crop (X, Y, N) to ``box`` (zero padding outside), resize to (N, size, size)."""
    pads = [(max(0, -b.start), max(0, b.stop - n)) for b, n in zip(box, stack.shape[:2])]
    padded = np.pad(stack, pads + [(0, 0)])
    crop = padded[box[0].start + pads[0][0] : box[0].stop + pads[0][0], box[1].start + pads[1][0] : box[1].stop + pads[1][0]]
    zoom = (size / crop.shape[0], size / crop.shape[1], 1.0)
    resized = ndimage.zoom(crop.astype(np.float32), zoom, order=order, grid_mode=True, mode="grid-constant")
    return np.moveaxis(resized[:size, :size], 2, 0)


def preprocess_volume(
    image: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    brain_mask: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
) -> ProcessedSlices:
    """Turn one (X, Y, Z) volume in any orientation into model-ready axial slices."""
    for name, other in (("brain mask", brain_mask), ("segmentation", segmentation)):
        if other is not None and other.shape != image.shape:
            raise InvalidVolumeError(f"{name} shape {other.shape} differs from the image's {image.shape}")
    if image.min() == image.max():
        raise InvalidVolumeError(f"the image is constant (every voxel is {image.min():g}): nothing to analyse")
    image, slice_numbers = to_ras(image, affine)
    brain = compute_mask(image, to_ras(brain_mask, affine)[0] if brain_mask is not None else None)
    if brain.sum() < 100:
        raise InvalidVolumeError("fewer than 100 brain voxels found: expected a brain MRI volume")
    tumour = to_ras(segmentation, affine)[0] > 0 if segmentation is not None else np.zeros_like(brain)
    scaled = scale_intensity(image, brain, spec.percentiles)
    keep = select_slices(brain, spec.min_brain_fraction)
    box = square_box(brain, in_plane_spacing(affine))
    brain_small = crop_resize(brain[..., keep], box, spec.size, order=1) > 0.5
    return ProcessedSlices(
        images=(crop_resize(scaled[..., keep], box, spec.size, order=1) * brain_small)[:, None],
        brain=brain_small[:, None],
        tumour=(crop_resize(tumour[..., keep], box, spec.size, order=1) > 0.5)[:, None] if segmentation is not None else None,
        slice_numbers=slice_numbers[keep],
        tumour_pixels=tumour[..., keep].sum(axis=(0, 1)).astype(np.int64),
        brain_pixels=brain[..., keep].sum(axis=(0, 1)).astype(np.int64),
    )
