"""The brain mask of a volume: given, implied by skull stripping, or extracted.

Skull-stripped images (HCP ``*_brain``, BraTS) have an exactly-zero background, so their mask
is their non-zero voxels. Raw images (IXI, most BIDS, a scan off the scanner) have a noisy
background and a skull instead. Their head is the largest bright region above Otsu's threshold;
their brain is extracted from it by morphology (``extract_brain``), or, with the recipe's
``skull_strip`` off, the whole head is kept, skull and all.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

# A skull-stripped volume is mostly exact zeros around under 2 litres of brain (BraTS 1.3-1.6,
# HCP's generous masks 1.8); a raw head scan has a noisy background, or, where its background
# was zeroed (IXI as NiChart distributes it), 4 litres and more of head and neck.
STRIPPED_ZERO_FRACTION = 0.1
MAX_BRAIN_ML = 3000.0
# Brain extraction: the skull, and on T1 the CSF around the brain, are darker than Otsu's
# head threshold on T1 and T2 alike, a thin shell that an erosion of ERODE_MM widens until the
# brain comes apart from the scalp, the eyes and the neck; the brain is then grown back by
# ERODE_MM + REGAIN_MM into bright voxels, regaining the gyri the erosion cut off without
# reaching across the skull. Chosen by Dice against the IXI label maps of healthy T1 scans
# (benchmarks/skull_strip.py), from a grid of 4-8 and 2-4 mm.
ERODE_MM = 6.0
REGAIN_MM = 4.0
# The extraction reads every k-th voxel along each axis finer than this: the grid it was measured
# on, and at 1 mm an eighth of the memory and time a full-resolution distance transform takes.
GRID_MM = 2.0


def is_skull_stripped(image: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> bool:
    """Mostly zeros, around no more than a brain's volume of non-zero voxels."""
    nonzero = np.count_nonzero(image)  # one pass over the scan for both
    zero_fraction = (image.size - nonzero) / max(image.size, 1)
    return zero_fraction >= STRIPPED_ZERO_FRACTION and nonzero * float(np.prod(spacing)) / 1000 <= MAX_BRAIN_ML


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    return labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=range(1, count + 1))))


def otsu_head_mask(image: np.ndarray) -> np.ndarray:
    """The largest bright connected region above Otsu's threshold, holes filled."""
    foreground = ndimage.binary_opening(image > threshold_otsu(image), structure=np.ones((3, 3, 3)))
    return ndimage.binary_fill_holes(largest_component(foreground))


def inner_distance_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Each voxel's distance in mm to the nearest voxel outside ``mask`` (beyond the array counts
    as outside): ``> r`` is ``mask`` eroded by a ball of radius r, in linear time."""
    padded = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)
    return padded[tuple(slice(1, -1) for _ in mask.shape)]


def fill_axial_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3-D, then in each axial slice (RAS: the last axis), where thick slices
    leave a ventricle open to the next slice."""
    mask = ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(mask[..., k]) for k in range(mask.shape[-1])], axis=-1)


def extract_brain(image: np.ndarray, spacing: tuple[float, float, float], erode_mm: float = ERODE_MM,
                  regain_mm: float = REGAIN_MM) -> np.ndarray:
    """The brain of a skull-on (X, Y, Z) RAS scan: bright voxels, eroded by ``erode_mm``, the
    largest piece left, grown back by ``erode_mm + regain_mm`` within the bright voxels (on a grid
    of about GRID_MM), then, at full resolution, its bright voxels with holes filled. On a head
    too small to erode (a few voxels across) it is the head."""
    step = tuple(max(1, int(GRID_MM // s)) for s in spacing)
    coarse = image[tuple(slice(None, None, k) for k in step)]
    coarse_spacing = tuple(s * k for s, k in zip(spacing, step))
    threshold = threshold_otsu(coarse)
    bright = coarse > threshold
    core = largest_component(inner_distance_mm(bright, coarse_spacing) > erode_mm)
    if not core.any():
        return otsu_head_mask(image)
    grown = ndimage.distance_transform_edt(~core, sampling=coarse_spacing) <= erode_mm + regain_mm
    for axis, k in enumerate(step):  # back onto the image's grid
        grown = np.repeat(grown, k, axis=axis)
    grown = grown[tuple(slice(0, n) for n in image.shape)]
    return fill_axial_holes(grown & (image > threshold))


def brain_mask(image: np.ndarray, given: np.ndarray | None = None, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
               skull_strip: bool = True) -> np.ndarray:
    """Boolean mask of an (X, Y, Z) RAS ``image``: ``given`` > 0; else its non-zero voxels when it
    is skull-stripped; else its extracted brain (``skull_strip``) or its whole head."""
    if given is not None:
        return given > 0
    if is_skull_stripped(image, spacing):
        return image > 0
    return extract_brain(image, spacing) if skull_strip else otsu_head_mask(image)
