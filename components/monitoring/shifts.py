"""Acquisition shifts a deployed detector may meet, applied to a volume (X, Y, Z), for drift
drills: each returns a new float32 array with the same shape and zeros (background) kept."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bias_field(image: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """A smooth multiplicative field, 1 - strength at one side of the head to 1 + strength at the
    other along the first axis: a receive coil's shading that N4 would remove."""
    ramp = np.linspace(-strength, strength, image.shape[0], dtype=np.float32)
    return (image * (1 + ramp[:, None, None])).astype(np.float32)


def gamma(image: np.ndarray, power: float = 0.5) -> np.ndarray:
    """A non-linear contrast change (another sequence's tissue ordering at the same extremes)."""
    top = float(image.max())
    return (top * np.clip(image / top, 0, None) ** power).astype(np.float32) if top > 0 else image.astype(np.float32)


def rescale(image: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """A global intensity scale, as from another scanner's gain: percentile normalisation is
    built to absorb this one, so it should not drift the scores."""
    return (image * factor).astype(np.float32)


def low_resolution(image: np.ndarray, sigma_voxels: float = 1.5) -> np.ndarray:
    """Lost resolution, as from a coarser acquisition or a smoothing reconstruction filter: a
    Gaussian blur of ``sigma_voxels`` inside the head, the background kept at zero."""
    blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma_voxels)
    return np.where(image > 0, blurred, 0).astype(np.float32)


SHIFTS = {"bias_field": bias_field, "gamma": gamma, "rescale": rescale, "low_resolution": low_resolution}
