"""Preprocessing of one 3-D volume into model-ready axial slices.

Steps, in order (each set by a PreprocessSpec field): reorient to canonical RAS; brain mask
(given, the non-zero voxels of a skull-stripped image, or an Otsu head mask otherwise);
resampling to an isotropic spacing; N4 bias-field correction; intensity normalisation inside
the mask; histogram matching to reference landmarks; axial slice selection; in-plane crop
(brain box or fixed size) and resize. The same function runs at training and serving time, so
a served scan sees exactly what the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import nibabel as nib
import numpy as np

from components.errors import InvalidVolumeError
from components.machine import kept_threads, usable_cpus
from components.preprocess.brain_mask import brain_mask as compute_mask
from components.preprocess.geometry import (
    SliceGeometry,
    crop_resize,
    linear_resize_reads,
    ras_spacing,
    resample,
    select_slices,
    square_box,
    to_ras,
)
from components.preprocess.intensity import (
    OrderStatistics,
    histogram_landmarks,
    match_histogram,
    matched_percentiles,
    n4_bias_correct,
    percentile_scale,
    zscore,
)
from components.preprocess.spec import PreprocessSpec

MIN_BRAIN_VOXELS = 100


@dataclass(frozen=True)
class PreparedVolume:
    """A volume after the 3-D steps: RAS, resampled, bias-corrected, with its normalisation fitted
    (``normalise``, applied voxel by voxel to the voxels kept). All arrays (X, Y, Z)."""

    image: np.ndarray
    normalise: Callable[[np.ndarray], np.ndarray]
    brain: np.ndarray
    tumour: np.ndarray
    lesions: np.ndarray  # other (non-tumour) lesions as integer kinds, 0 where none (all 0 when none were given)
    slice_numbers: np.ndarray  # the input file's own axial index of each Z slice
    spacing: tuple[float, float, float]
    ras_shape: tuple[int, int, int]  # before resampling


@dataclass(frozen=True)
class ProcessedSlices:
    """Model-ready slices of one volume, N = kept axial slices.

    images:        (N, 1, S, S) float32, normalised, ``spec.background`` outside the brain
    brain:         (N, 1, S, S) bool
    tumour:        (N, 1, S, S) bool, or None when no segmentation was given
    lesions:       (N, 1, S, S) bool, other lesions, or None when none were given
    slice_numbers: (N,) int, each slice's index along the input file's own axial axis
    tumour_pixels: (N,) int, tumour pixels of each slice before the in-plane resize
    brain_pixels:  (N,) int, brain pixels of each slice before the in-plane resize
    lesion_pixels: (N,) int, other-lesion pixels of each slice before the in-plane resize
    lesion_kind_pixels: {kind: (N,) int}, the same per lesion kind (the label value in the
                   lesions file), for the kinds present in this volume
    geometry:      where the slices came from (to put maps back on the input's grid), and
                   their spacing
    """

    images: np.ndarray
    brain: np.ndarray
    tumour: np.ndarray | None
    slice_numbers: np.ndarray
    tumour_pixels: np.ndarray
    brain_pixels: np.ndarray
    lesions: np.ndarray | None = None
    lesion_pixels: np.ndarray | None = None
    lesion_kind_pixels: dict[int, np.ndarray] | None = None
    geometry: SliceGeometry | None = None

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """(slice, pixel) millimetres, where the geometry is known."""
        return self.geometry.spacing_mm if self.geometry is not None else None


def _check_inputs(image: np.ndarray, **others: np.ndarray | None) -> None:
    for name, other in others.items():
        if other is not None and other.shape != image.shape:
            raise InvalidVolumeError(f"{name.replace('_', ' ')} shape {other.shape} differs from the image's {image.shape}")
    if image.min() == image.max():
        raise InvalidVolumeError(f"the image is constant (every voxel is {image.min():g}): nothing to analyse")


def in_slabs(work: Callable[[np.ndarray], tuple[np.ndarray, ...]], slices: np.ndarray) -> tuple[np.ndarray, ...]:
    """``work(slices)``, done on slabs of ``slices``, one per usable CPU, each in a thread of
    this process's pool (a lone slab on the caller's thread), each of its arrays joined along the
    first axis: numpy's and scipy's loops release the GIL, so one scan's preparation uses the
    cores its caller was given. Every slice comes out as it would alone."""
    slabs = [slab for slab in np.array_split(slices, usable_cpus()) if len(slab)]
    if len(slabs) <= 1:
        return work(slices)
    done = list(kept_threads("slab", len(slabs)).map(work, slabs))
    return tuple(np.concatenate(parts) for parts in zip(*done))


def brain_voxels(image: np.ndarray, brain: np.ndarray, in_order: bool) -> np.ndarray:
    """``image[brain]``; without ``in_order`` (for order statistics, which ignore it) read in
    memory order where both lie in NIfTI's (F) order, as a scan's voxels do: a strided C-order
    read of them takes several times as long."""
    if not in_order and image.flags.f_contiguous and brain.flags.f_contiguous:
        return image.ravel(order="F")[brain.ravel(order="F")]
    return image[brain]  # C order: a z-score's sums round as they always did


def fit_normalisation(image: np.ndarray, brain: np.ndarray, spec: PreprocessSpec,
                      spacing: tuple[float, ...]) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """N4 (optional) over the volume, then the voxel-wise map fitted on the brain: percentile
    scaling or z-score, then histogram matching (optional). Returns the (corrected) image and
    the map, which refuses intensities whose arithmetic leaves float32 (finite, yet near its limits)."""
    given = image  # before N4: the range an error names
    if spec.bias_correction:
        image = n4_bias_correct(image, brain, spacing)
    values = brain_voxels(image, brain, in_order=spec.normalisation == "zscore")
    # one read of the brain's order statistics serves both fits: each normalisation is
    # non-decreasing, so the scaled values' order statistics are the scaled order statistics
    reads = ([] if spec.normalisation == "zscore" else [spec.percentiles]) + \
        ([matched_percentiles(spec.histogram_landmarks)] if spec.histogram_landmarks else [])
    ordered = OrderStatistics.of(values, *reads) if reads else None
    scale = zscore(values) if spec.normalisation == "zscore" else percentile_scale(
        ordered, spec.percentiles, spec.value_range)
    match = match_histogram(ordered.mapped(scale), spec.histogram_landmarks) if spec.histogram_landmarks else None

    def normalise(values: np.ndarray) -> np.ndarray:
        values = scale(values) if match is None else match(scale(values))
        if not np.isfinite(values).all():  # the range is read only here: two passes over every scan saved
            raise InvalidVolumeError(f"intensities from {given.min():g} to {given.max():g} do not normalise to finite "
                                     "values: rescale the scan to its scanner's usual range")
        return values

    return image, normalise


def prepare_volume(
    image: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    brain_mask: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    lesions: np.ndarray | None = None,
) -> PreparedVolume:
    """The 3-D steps: orientation, mask, resampling and intensity normalisation."""
    _check_inputs(image, brain_mask=brain_mask, segmentation=segmentation, lesions=lesions)
    image, slice_numbers = to_ras(image, affine)
    spacing, ras_shape = ras_spacing(affine), image.shape
    brain = compute_mask(image, to_ras(brain_mask, affine)[0] if brain_mask is not None else None, spacing, spec.skull_strip)
    tumour = to_ras(segmentation, affine)[0] > 0 if segmentation is not None else np.zeros(brain.shape, bool)
    other = np.rint(to_ras(lesions, affine)[0]).astype(np.int16) if lesions is not None else np.zeros(brain.shape, np.int16)
    if spec.spacing_mm is not None:
        target = float(spec.spacing_mm)
        image = resample(image, spacing, target, order=3)
        brain = resample(brain, spacing, target, order=1) > 0.5
        tumour = resample(tumour, spacing, target, order=1) > 0.5
        other = resample(other, spacing, target, order=0)  # nearest: kinds are labels
        source = np.round((np.arange(image.shape[2]) + 0.5) * target / spacing[2] - 0.5).astype(int)
        slice_numbers = slice_numbers[np.clip(source, 0, len(slice_numbers) - 1)]
        spacing = (target, target, target)
    if np.count_nonzero(brain) < MIN_BRAIN_VOXELS:
        raise InvalidVolumeError(f"fewer than {MIN_BRAIN_VOXELS} brain voxels found: expected a brain MRI volume")
    return PreparedVolume(*fit_normalisation(image, brain, spec, spacing), brain, tumour, other, slice_numbers, spacing,
                          ras_shape)


def reference_landmarks(image: np.ndarray, affine: np.ndarray, spec: PreprocessSpec, brain_mask=None) -> tuple[float, ...]:
    """Histogram-matching landmarks of a reference volume, normalised as ``spec`` says."""
    prepared = prepare_volume(image, affine, replace(spec, histogram_landmarks=None), brain_mask)
    return histogram_landmarks(prepared.normalise(prepared.image[prepared.brain]))


def slice_spacing(spacing: tuple[float, ...], box: tuple[slice, slice], size: int) -> tuple[float, float]:
    """(slice, pixel) millimetres of model slices cut from a volume of ``spacing`` and resized
    from the square ``box`` to ``size`` pixels."""
    return float(spacing[2]), float((box[0].stop - box[0].start) * spacing[0] / size)


def preprocess_volume(
    image: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    brain_mask: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    lesions: np.ndarray | None = None,
) -> ProcessedSlices:
    """Turn one (X, Y, Z) volume in any orientation into model-ready axial slices."""
    volume = prepare_volume(image, affine, spec, brain_mask, segmentation, lesions)
    middle = None if spec.middle_mm is None else max(1, int(round(spec.middle_mm / volume.spacing[2])))
    keep = select_slices(volume.brain, spec.min_brain_fraction, middle)
    box = square_box(volume.brain, volume.spacing[:2], spec.crop_mm if spec.crop == "fixed" else None)
    # Only the voxels the crop's linear resize weighs are gathered and normalised (the map is
    # voxel-wise, and the others count for exactly nothing): about a fifth of the box's, in the
    # kept slices. The box is shifted to its part inside the volume, padding as before.
    inside = tuple(slice(max(0, b.start), min(b.stop, n)) for b, n in zip(box, volume.image.shape[:2]))
    shifted = tuple(slice(b.start - i.start, b.stop - i.start) for b, i in zip(box, inside))
    rows, cols = (linear_resize_reads(b, spec.size, n) for b, n in zip(box, volume.image.shape[:2]))
    weighed = np.ix_(rows - inside[0].start, cols - inside[1].start)

    def resized(values: np.ndarray, fill: float = 0.0) -> np.ndarray:  # (n, S, S) from the weighed voxels
        stack = np.zeros((*(i.stop - i.start for i in inside), values.shape[-1]), np.float32)
        stack[weighed] = values
        return crop_resize(stack, shifted, spec.size, order=1, fill=fill)

    def model_slices(slab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (n, S, S) brain and images
        read = np.ix_(rows, cols, slab)
        return resized(volume.brain[read]) > 0.5, resized(volume.normalise(volume.image[read]), spec.background)

    brain, images = in_slabs(model_slices, keep)
    none = np.zeros(len(keep), np.int64)  # the pixel counts of what was not given
    tumour = volume.tumour[..., keep] if segmentation is not None else None
    other = volume.lesions[..., keep] if lesions is not None else None
    return ProcessedSlices(
        images=np.where(brain, images, spec.background).astype(np.float32)[:, None],
        brain=brain[:, None],
        tumour=(crop_resize(tumour, box, spec.size, order=1) > 0.5)[:, None] if tumour is not None else None,
        slice_numbers=volume.slice_numbers[keep],
        tumour_pixels=tumour.sum(axis=(0, 1)).astype(np.int64) if tumour is not None else none,
        brain_pixels=volume.brain[..., keep].sum(axis=(0, 1)).astype(np.int64),
        lesions=(crop_resize(other > 0, box, spec.size, order=1) > 0.5)[:, None] if other is not None else None,
        lesion_pixels=(other > 0).sum(axis=(0, 1)).astype(np.int64) if other is not None else none,
        lesion_kind_pixels={int(k): (other == k).sum(axis=(0, 1)).astype(np.int64) for k in np.unique(other) if k > 0}
        if other is not None else {},
        geometry=SliceGeometry(image.shape, nib.orientations.io_orientation(affine), volume.ras_shape,
                               volume.image.shape, keep, box, slice_spacing(volume.spacing, box, spec.size)),
    )
