"""Intensity steps: N4 bias-field correction, normalisation inside the brain, histogram matching.

Histogram matching maps the brain's intensity quantiles onto a reference's (101 landmarks,
0 to 100 %), in the spirit of Nyul & Udupa's standardisation with dense landmarks. Only the
reference's landmarks are needed, so a trained model carries them and serving needs no
reference volume.

Each normalisation is fitted on the brain's voxels and returned as a map applied voxel by voxel,
so a caller transforms only the voxels it keeps (the model's slices, not the whole volume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from components.errors import InvalidVolumeError

LANDMARK_PERCENTILES = np.linspace(0.0, 100.0, 101)
N4_SHRUNK_VOXEL_MM = 4.0  # N4 fits the bias field on a ~4 mm grid: fast, and the field is smooth
HISTOGRAM_BINS = 1 << 16  # order_statistics' buckets: a brain's few million voxels, some tens to a bucket


def order_statistics(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``np.sort(values, axis=None)[ranks]`` without sorting them all. The values are counted
    into HISTOGRAM_BINS equal-width buckets in value order, and only the buckets holding a
    wanted rank are sorted: a few passes over a brain's millions of voxels instead of a sort.
    The same values as the sort, exactly; a few values, NaN, inf or a constant are sorted."""
    values, ranks = values.ravel(), np.asarray(ranks, np.intp)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    # float32 where nothing nears its limits; each step rounds correctly, so never reorders
    steps = np.float32 if max(abs(low), abs(high)) < 1e37 else np.float64
    per_unit = steps(HISTOGRAM_BINS / (high - low)) if high > low else np.inf
    if values.size < HISTOGRAM_BINS or not np.isfinite(per_unit):  # few, constant, NaN, inf or a tiny range
        return np.sort(values)[ranks]
    buckets = np.multiply(np.subtract(values, steps(low), dtype=steps), per_unit).astype(np.int32)
    np.minimum(buckets, HISTOGRAM_BINS - 1, out=buckets)  # the maximum lands on the last edge
    counts = np.bincount(buckets, minlength=HISTOGRAM_BINS)
    ends = np.cumsum(counts)  # values in this bucket or below
    holding = np.searchsorted(ends, ranks, side="right")  # each rank's bucket
    wanted = np.zeros(HISTOGRAM_BINS, bool)
    wanted[holding] = True
    gathered = np.sort(values[wanted[buckets]])  # the wanted buckets' values, bucket after bucket
    before = np.cumsum(np.where(wanted, counts, 0)) - counts  # gathered values in earlier wanted buckets
    return gathered[before[holding] + ranks - (ends - counts)[holding]]


@dataclass(frozen=True)
class OrderStatistics:
    """Some of a sample's sorted values: ``values[i]`` is its ``ranks[i]``-th smallest of
    ``count``; enough of them to read given percentiles, the largest always among them."""

    count: int
    ranks: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, sample: np.ndarray, *percentile_sets) -> OrderStatistics:
        """The values each of ``percentile_sets`` reads (numpy's linear interpolation) of ``sample``."""
        count = int(np.size(sample))
        reads = [np.concatenate(_reads(count, percentiles)[:2]) for percentiles in percentile_sets]
        ranks = np.unique(np.concatenate([*reads, [max(count - 1, 0)]]).astype(np.intp))
        return cls(count, ranks, order_statistics(sample, ranks))

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray]) -> OrderStatistics:
        """Those of ``transform(sample)``, for a non-decreasing voxel-wise ``transform``."""
        return OrderStatistics(self.count, self.ranks, transform(self.values))

    def percentiles(self, percentiles) -> np.ndarray:
        """``np.percentile(sample, percentiles)``: the same numbers, its interpolation step by step."""
        if self.values.dtype.kind == "f" and np.isnan(self.values[-1]):  # NaNs sort last, and poison every quantile
            return np.full(np.shape(percentiles), np.nan, self.values.dtype)
        below, above, weight = _reads(self.count, percentiles)
        low, high = self.values[np.searchsorted(self.ranks, below)], self.values[np.searchsorted(self.ranks, above)]
        step = high - low
        result = np.add(low, step * weight)
        # from the nearer end, as numpy does: exact at both ends of each interval
        np.subtract(high, step * (1 - weight), out=result, where=weight >= 0.5, casting="unsafe", dtype=result.dtype)
        return result


def _reads(count: int, percentiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(below, above, weight): the ranks np.percentile interpolates between, and the weight of
    the one above."""
    virtual = (count - 1) * np.true_divide(np.asarray(percentiles, np.float64), 100)
    below = np.floor(virtual)
    above = below + 1
    last = virtual >= count - 1
    below[last] = above[last] = count - 1  # the largest value, as numpy reads it
    return below.astype(np.intp), above.astype(np.intp), virtual - np.floor(virtual)


def percentiles_of(values: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile(values, percentiles)``, read off ``values``' order statistics."""
    return OrderStatistics.of(values, percentiles).percentiles(percentiles)


def percentile_scale(
    brain: OrderStatistics, percentiles: tuple[float, float], value_range: tuple[float, float]
) -> Callable[[np.ndarray], np.ndarray]:
    """The map of the (low, high) percentiles of the brain's intensities to ``value_range``,
    clipped: non-decreasing, so the brain's order statistics map through it."""
    low, high = brain.percentiles(percentiles)
    if high - low <= 1e-6 * max(abs(high), 1.0):
        raise InvalidVolumeError(f"the brain's intensities are flat ({percentiles[0]:g}th to {percentiles[1]:g}th "
                                 f"percentile: {low:g} to {high:g}): nothing to normalise")

    def scale(values: np.ndarray) -> np.ndarray:
        unit = np.clip((values - low) / (high - low), 0.0, 1.0)
        return (value_range[0] + unit * (value_range[1] - value_range[0])).astype(np.float32)

    return scale


def zscore(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The map (intensity - mean) / std of the brain's intensities (``values``, in the volume's
    order: the sums round as they always did): increasing, so order statistics map through it."""
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


def matched_percentiles(landmarks: tuple[float, ...]) -> np.ndarray:
    """The percentiles of the brain that ``landmarks`` give the values of: evenly spaced, 0 to 100."""
    return np.linspace(0.0, 100.0, len(landmarks))


def match_histogram(brain: OrderStatistics, landmarks: tuple[float, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The piecewise-linear map of the brain's own quantiles (of its normalised intensities)
    onto the reference ``landmarks``."""
    reference = np.asarray(landmarks, np.float64)
    source = brain.percentiles(matched_percentiles(landmarks))
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
