"""From slice scores to a verdict on the whole scan.

The served rule is the maximum: one lesion is enough to flag a scan. The others are the
candidates `benchmarks/volume_rules.py` measures against it, each at its own calibrated
threshold: the k-th highest slice (one odd slice is not enough), the number of slices above the
slice threshold, and the largest 3-D connected component of the thresholded pixel map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def volume_score(scores: np.ndarray) -> float:
    """A volume's score is its most anomalous slice's: one lesion is enough to flag a scan."""
    return float(np.max(scores)) if len(scores) else 0.0


def kth_highest(scores: np.ndarray, k: int = 3) -> float:
    """The k-th highest slice score (the lowest score of a scan with fewer slices)."""
    scores = np.sort(np.asarray(scores, float))
    return float(scores[-min(k, len(scores))]) if len(scores) else 0.0


def slices_above(scores: np.ndarray, threshold: float) -> float:
    """How many slices score above the slice threshold."""
    return float((np.asarray(scores) > threshold).sum())


def largest_component(maps: np.ndarray, brain: np.ndarray, threshold: float) -> int:
    """Voxels of the largest 3-D connected component (26-connected) of ``maps > threshold``
    inside ``brain``; ``maps`` (N, 1, H, W) are one scan's post-processed slices, in order."""
    found = (np.asarray(maps) > threshold) & np.asarray(brain, bool)
    labels, count = ndimage.label(found[:, 0], structure=np.ones((3, 3, 3), bool))
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0
