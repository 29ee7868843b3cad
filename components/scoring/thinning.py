"""Fewer network passes on thin-slice scans: every k-th slice scored, the maps between interpolated.

A model pixel spans a brain's width over the slice size (about 2.6 mm at 64 px), so on a 1 mm scan
neighbouring slices are closer together than a pixel is wide and the network sees nearly the same
slice twice. Scoring slices about a pixel apart gives the network an isotropic view of the scan at
half the work, and the same number of slices a volume as the 2 mm scans its thresholds came from
(benchmarks/slice_thinning.py measures what it costs: time, slice AUROC, Dice).
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from components.preprocess.volume import ProcessedSlices


def slice_step(spacing_mm: tuple[float, float] | None) -> int:
    """k: scored slices no further apart than a model pixel is wide (pixel over slice spacing,
    rounded down); 1 where the slices are as thick as a pixel or the spacing is unknown."""
    if spacing_mm is None:
        return 1
    slice_mm, pixel_mm = spacing_mm
    return max(1, int(np.floor(pixel_mm / slice_mm + 1e-6)))


def every_kth(count: int, step: int) -> np.ndarray:
    """Indices of every ``step``-th of ``count`` slices, the last one included, so that each
    slice not scored lies between two that are."""
    picked = np.arange(0, count, step)
    return picked if count == 0 or picked[-1] == count - 1 else np.append(picked, count - 1)


def take(slices: ProcessedSlices, picked: np.ndarray) -> ProcessedSlices:
    """The model slices at ``picked`` (indices into ``slices``), every per-slice field (an array
    with one entry a slice) cut alike."""
    count = len(slices.images)
    if len(picked) == count:
        return slices
    cut = {f.name: value[picked] for f in fields(slices)
           if isinstance(value := getattr(slices, f.name), np.ndarray) and len(value) == count}
    kinds = {kind: pixels[picked] for kind, pixels in (slices.lesion_kind_pixels or {}).items()}
    geometry = replace(slices.geometry, kept=slices.geometry.kept[picked]) if slices.geometry is not None else None
    return replace(slices, **cut, lesion_kind_pixels=kinds, geometry=geometry)


def fill_between(maps: np.ndarray, positions: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """(N, ...) maps of all N slices from the (len(picked), ...) maps of those at ``picked``:
    linear between the two scored slices around each other one, weighed by ``positions`` (each
    slice's axial index), so a gap in the slices kept is bridged by distance, not by count."""
    if len(picked) == len(positions):
        return maps
    if len(picked) == 1:
        return np.repeat(maps, len(positions), axis=0)
    known = np.asarray(positions, np.float64)[picked]
    right = np.clip(np.searchsorted(known, positions, side="right"), 1, len(known) - 1)
    weight = ((positions - known[right - 1]) / (known[right] - known[right - 1])).astype(np.float32)
    weight = weight.reshape(-1, *[1] * (maps.ndim - 1))
    return (1 - weight) * maps[right - 1] + weight * maps[right]
