"""The pixel-wise protocol's post-processing (anovaegan-spatial-autoencoders.txt, and the IntroVAE
paper): per subject, the anomaly maps of its slices are stacked into a sub-volume, smoothed by a
median filter and multiplied by a slightly eroded brain mask; after thresholding, 3-D connected
components smaller than a few voxels are dropped.

The paper's median is 5 x 5 x 5 voxels of about 1 mm: 5 mm. A model slice here is 64 px across
a brain of 16-18 cm, so 5 voxels span 14 mm in-plane and, across 6 mm slices, 30 mm, which
erases tumours under a centimetre; the window is a model's setting (``evaluate.pixel_median``,
recorded with its thresholds, whose units it sets), 3 by default (benchmarks/pixel_median.py).
Through-plane the window spans no more millimetres than in-plane (``median_window``): across the
5-6 mm slices of many clinical T2 scans, 3 slices would span 15-18 mm, so there it is one slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def median_window(median: int, spacing_mm: tuple[float, float] | None) -> tuple[int, int, int]:
    """The median's window (slices, rows, columns): ``median`` pixels in-plane and, through-plane,
    the most slices (odd, at least 1, at most ``median``) that span no more millimetres than those
    pixels. ``spacing_mm``: (slice, pixel) spacing of the model slices; None: a cubic window."""
    if spacing_mm is None:
        return (median,) * 3
    slice_mm, pixel_mm = spacing_mm
    through = min(median, int(median * pixel_mm / slice_mm + 1e-6))
    return (max(1, through - (1 - through % 2)), median, median)


def smooth_subject(maps: np.ndarray, brain: np.ndarray, median: int, spacing_mm: tuple[float, float] | None = None,
                   erosion: int = 1) -> np.ndarray:
    """(N, 1, S, S) maps of one subject's consecutive slices -> median-filtered over ``median``
    pixels in-plane (1: none) and as many slices as ``median_window`` allows for ``spacing_mm``
    (slice, pixel; None: ``median`` slices), inside an eroded brain."""
    stack = ndimage.median_filter(maps[:, 0], size=median_window(median, spacing_mm), mode="nearest")
    inner = ndimage.binary_erosion(brain[:, 0], iterations=erosion) if erosion else brain[:, 0]
    return (stack * inner)[:, None].astype(np.float32)


def smooth_by_subject(maps: np.ndarray, brain: np.ndarray, subjects: np.ndarray, median: int,
                      spacing_mm: np.ndarray | None = None) -> np.ndarray:
    """``smooth_subject`` of each subject's slices (contiguous rows), in the rows' own order;
    ``spacing_mm``: each row's (slice, pixel) spacing, or None for cubic windows."""
    blocks = subject_blocks(np.asarray(subjects))
    spacing = [None if spacing_mm is None else tuple(spacing_mm[rows[0]]) for rows in blocks]
    smoothed = np.concatenate([smooth_subject(maps[rows], brain[rows], median, mm) for rows, mm in zip(blocks, spacing)])
    return smoothed[np.argsort(np.concatenate(blocks))]


def drop_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Remove 3-D connected components (26-connectivity) of fewer than ``min_voxels`` voxels."""
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count == 0:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= min_voxels))


def segment(maps: np.ndarray, threshold: float, min_voxels: int) -> np.ndarray:
    """Binary lesion mask of one subject's post-processed maps: above threshold, small blobs dropped."""
    return drop_small_components(maps > threshold, min_voxels)


def subject_blocks(subjects: np.ndarray) -> list[np.ndarray]:
    """Row indices of each subject, in order of first appearance (rows of a subject are contiguous)."""
    _, first = np.unique(subjects, return_index=True)
    return [np.flatnonzero(subjects == subjects[i]) for i in sorted(first)]
