"""Intensity steps: N4 bias-field correction, normalisation inside the brain, histogram matching.

Histogram matching maps the brain's intensity quantiles onto a reference's (101 landmarks,
0 to 100 %), in the spirit of Nyul & Udupa's standardisation with dense landmarks. Only the
reference's landmarks are needed, so a trained model carries them and serving needs no
reference volume.

Each normalisation is fitted on the brain's voxels and returned as a map applied voxel by voxel,
so a caller transforms only the voxels it keeps (the model's slices, not the whole volume).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from components.errors import InvalidVolumeError

LANDMARK_PERCENTILES = np.linspace(0.0, 100.0, 101)
N4_SHRUNK_VOXEL_MM = 4.0  # N4 fits the bias field on a ~4 mm grid: fast, and the field is smooth


def percentiles_of(values: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile(values, percentiles)``: ``sorted_percentiles`` of the sorted values."""
    return sorted_percentiles(np.sort(values, axis=None), percentiles)


def sorted_percentiles(ordered: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile(ordered, percentiles)`` of sorted 1-D values, the same numbers (its linear
    interpolation, step by step) read off directly, where np.percentile partitions the values
    around every quantile's neighbours, sorted or not: for a brain's 101 landmarks, a sort and
    this take a tenth of np.percentile's time."""
    quantiles = np.true_divide(np.asarray(percentiles, np.float64), 100)
    if ordered.dtype.kind == "f" and np.isnan(ordered[-1]):  # NaNs sort last, and poison every quantile
        return np.full(quantiles.shape, np.nan, ordered.dtype)
    virtual = (len(ordered) - 1) * quantiles
    below = np.floor(virtual)
    above = below + 1
    last = virtual >= len(ordered) - 1
    below[last] = above[last] = -1  # the largest value, as numpy reads it
    low, high = ordered[below.astype(np.intp)], ordered[above.astype(np.intp)]
    weight = virtual - below
    step = high - low
    result = np.add(low, step * weight)
    # from the nearer end, as numpy does: exact at both ends of each interval
    np.subtract(high, step * (1 - weight), out=result, where=weight >= 0.5, casting="unsafe", dtype=result.dtype)
    return result


def percentile_scale(
    ordered: np.ndarray, percentiles: tuple[float, float], value_range: tuple[float, float]
) -> Callable[[np.ndarray], np.ndarray]:
    """The map of the (low, high) percentiles of the brain's intensities (``ordered``: sorted) to
    ``value_range``, clipped: monotone, so it keeps sorted values sorted."""
    low, high = sorted_percentiles(ordered, percentiles)
    if high - low <= 1e-6 * max(abs(high), 1.0):
        raise InvalidVolumeError(f"the brain's intensities are flat ({percentiles[0]:g}th to {percentiles[1]:g}th "
                                 f"percentile: {low:g} to {high:g}): nothing to normalise")

    def scale(values: np.ndarray) -> np.ndarray:
        unit = np.clip((values - low) / (high - low), 0.0, 1.0)
        return (value_range[0] + unit * (value_range[1] - value_range[0])).astype(np.float32)

    return scale


def zscore(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The map (intensity - mean) / std of the brain's intensities (``values``, in the volume's
    order: the sums round as they always did): monotone, so it keeps sorted values sorted."""
    std = float(values.std())
    if not np.isfinite(std):  # a float32 sum of squares overflows near float32's limits
        raise InvalidVolumeError(f"intensities up to {float(np.abs(values).max()):g} are too extreme to normalise: "
                                 "rescale the scan to its scanner's usual range")
    if std <= 1e-6 * max(abs(float(values.mean())), 1.0):
        raise InvalidVolumeError(f"the brain's intensities are flat (mean {float(values.mean()):g}, standard deviation "
                                 f"{std:g}): nothing to normalise")
    mean = values.mean()
    return lambda found: ((found - mean) / std).astype(np.float32)


def histogram_landmarks(brain_values: np.ndarray) -> tuple[float, ...]:
    """The quantiles of the brain's intensities at LANDMARK_PERCENTILES: a reference for matching."""
    return tuple(float(v) for v in percentiles_of(brain_values, LANDMARK_PERCENTILES))


def match_histogram(ordered: np.ndarray, landmarks: tuple[float, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The piecewise-linear map of the brain's own quantiles (of its normalised intensities,
    ``ordered``: sorted) onto the reference ``landmarks``."""
    reference = np.asarray(landmarks, np.float64)
    percentiles = np.linspace(0.0, 100.0, len(reference))
    source = sorted_percentiles(ordered, percentiles)
    # Tied quantiles (a clipped tail) must still increase for np.interp.
    source = source + np.arange(len(source)) * 1e-9 * max(float(np.ptp(source)), 1.0)
    return lambda values: np.interp(values, source, reference).astype(np.float32)


def n4_bias_correct(image: np.ndarray, brain: np.ndarray, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Divide out a smooth multiplicative bias field fitted by N4 (Tustison et al. 2010) in the brain.

    The field is estimated on a grid shrunk to about N4_SHRUNK_VOXEL_MM and evaluated at full
    resolution, as ANTs does by default.
    """
    try:
        import SimpleITK as sitk
    except ImportError as err:  # a declared dependency, but say what to do if it is absent
        raise RuntimeError("preprocess.bias_correction needs SimpleITK: pip install SimpleITK") from err
    positive = np.clip(image, 0.0, None).astype(np.float32)
    # SimpleITK orders axes (z, y, x): transpose so its spacing matches ours.
    full = sitk.GetImageFromArray(positive.T)
    full.SetSpacing([float(s) for s in spacing_mm])
    mask = sitk.GetImageFromArray(brain.T.astype(np.uint8))
    mask.CopyInformation(full)
    shrink = [max(1, int(round(N4_SHRUNK_VOXEL_MM / s))) for s in spacing_mm]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([50, 50, 50, 50])
    corrector.Execute(sitk.Shrink(full, shrink), sitk.Shrink(mask, shrink))
    log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full)).T
    return (positive / np.exp(log_bias)).astype(np.float32)
