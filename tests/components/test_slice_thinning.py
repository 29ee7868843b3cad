"""Thin-slice scans scored on every k-th slice, the maps between interpolated."""

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from components.data.layouts import read_brats
from components.data.nifti_io import load_volume, volume_from_bytes
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import preprocess_volume
from components.scoring.thinning import every_kth, fill_between, slice_step, take


@pytest.mark.parametrize(("spacing", "step"), [((1.0, 2.6), 2), ((0.7, 2.6), 3), ((2.0, 2.6), 1), ((6.0, 2.6), 1),
                                               ((1.0, 2.0), 2), ((0.1 * 3, 0.9), 3), (None, 1)])
def test_scored_slices_lie_no_further_apart_than_a_model_pixel_is_wide(spacing, step):
    assert slice_step(spacing) == step


@pytest.mark.parametrize(("count", "step", "picked"), [(7, 2, [0, 2, 4, 6]), (6, 2, [0, 2, 4, 5]), (5, 1, [0, 1, 2, 3, 4]),
                                                       (1, 3, [0]), (2, 5, [0, 1])])
def test_the_first_and_the_last_slice_are_always_scored(count, step, picked):
    assert every_kth(count, step).tolist() == picked


def test_every_per_slice_field_is_cut_alike(phantom_roots):
    case = read_brats(phantom_roots[1])[0]
    image, affine = load_volume(case.image)
    slices = preprocess_volume(image, affine, PreprocessSpec(size=32), segmentation=load_volume(case.segmentation)[0],
                               lesions=load_volume(case.lesions)[0])
    picked = every_kth(len(slices.images), 3)
    cut = take(slices, picked)
    for f in fields(slices):
        value = getattr(slices, f.name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(cut, f.name), value[picked])
    assert all(len(pixels) == len(picked) for pixels in cut.lesion_kind_pixels.values())
    np.testing.assert_array_equal(cut.geometry.kept, slices.geometry.kept[picked])


def test_a_slice_not_scored_takes_its_neighbours_maps_weighed_by_distance():
    positions = np.array([10, 11, 12, 13, 20, 21])  # a gap in the slices kept, between 13 and 20
    picked = np.array([0, 2, 4, 5])
    maps = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((4, 1, 2, 2), np.float32)
    filled = fill_between(maps, positions, picked)
    np.testing.assert_array_equal(filled[picked], maps)  # the scored ones exactly as scored
    assert filled[1, 0, 0, 0] == pytest.approx(0.5)  # halfway between slices 10 and 12
    assert filled[3, 0, 0, 0] == pytest.approx(1 + 1 / 8)  # slice 13: 1/8 of the way from 12 to 20
    assert fill_between(maps[:1], positions[:3], np.array([0])).shape == (3, 1, 2, 2)


def thin_slice_scan(path: Path, factor: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A scan resampled to ``factor`` x thinner axial slices (a 3 mm phantom's to 1 mm)."""
    image, affine = load_volume(path)
    fine = ndimage.zoom(image, (1, 1, factor), order=1, grid_mode=True, mode="nearest")
    return fine, affine @ np.diag([1.0, 1.0, 1 / factor, 1.0])


def test_a_thin_slice_scan_is_scored_on_every_kth_slice_and_mapped_on_all(predictor, phantom_roots):
    image, affine = thin_slice_scan(read_brats(phantom_roots[1])[0].image)
    every = predictor.predict(image, affine, with_map="nifti")
    thinned = replace(predictor, thin_slices=True).predict(image, affine, with_map="nifti")
    all_scores = {s["index"]: s["score"] for s in every["slices"]}
    scores = {s["index"]: s["score"] for s in thinned["slices"]}
    indices = sorted(scores)
    step = indices[1] - indices[0]
    assert step > 1 and thinned["slice_step"] == step and every["slice_step"] == 1
    assert indices[:-1] == sorted(all_scores)[:-1:step][: len(indices) - 1]  # every k-th, and the last
    assert indices[-1] == max(all_scores) and set(indices) <= set(all_scores)
    np.testing.assert_allclose([scores[i] for i in indices], [all_scores[i] for i in indices], rtol=1e-5)
    assert thinned["slices_scored"] + thinned["slices_skipped"] == image.shape[2] == (
        every["slices_scored"] + every["slices_skipped"])
    full_map, thin_map = (volume_from_bytes(answer["map"])[0] for answer in (every, thinned))
    np.testing.assert_allclose(thin_map[..., indices], full_map[..., indices], rtol=1e-4, atol=1e-6)
    between = [i for i in sorted(all_scores) if i not in scores]
    assert between and all(thin_map[..., i].any() for i in between)  # interpolated, not left empty
    middle = (indices[0] + indices[1]) // 2
    weight = (middle - indices[0]) / step
    np.testing.assert_allclose(thin_map[..., middle], (1 - weight) * thin_map[..., indices[0]] + weight * thin_map[..., indices[1]],
                               rtol=1e-4, atol=1e-5)


def test_a_scan_with_slices_as_thick_as_a_pixel_is_scored_whole(predictor, phantom_roots):
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    assert replace(predictor, thin_slices=True).predict(image, affine)["slices"] == predictor.predict(image, affine)["slices"]

