"""The brain (or head) mask of a volume: given, implied by skull stripping, or computed.

Skull-stripped images (HCP ``*_brain``, BraTS) have an exactly-zero background, so their mask
is their non-zero voxels. Raw images (IXI, most BIDS) have a noisy background instead; for
them an Otsu threshold, opened, reduced to its largest component and hole-filled, gives the
head. That is not a skull strip: the skull stays inside the mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

# A skull-stripped volume is mostly background; a raw head scan has almost no exact zeros.
STRIPPED_ZERO_FRACTION = 0.1


def is_skull_stripped(image: np.ndarray) -> bool:
    return float(np.mean(image == 0)) >= STRIPPED_ZERO_FRACTION


def otsu_head_mask(image: np.ndarray) -> np.ndarray:
    """The largest bright connected region above Otsu's threshold, holes filled."""
    foreground = image > threshold_otsu(image)
    foreground = ndimage.binary_opening(foreground, structure=np.ones((3, 3, 3)))
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    largest = 1 + int(np.argmax(ndimage.sum_labels(foreground, labels, index=range(1, count + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def brain_mask(image: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask, same shape as ``image``: ``given`` > 0, else non-zero voxels, else Otsu."""
    if given is not None:
        return given > 0
    return image > 0 if is_skull_stripped(image) else otsu_head_mask(image)
