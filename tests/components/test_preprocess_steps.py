"""Each preprocessing step on its own: resampling, N4, normalisations, histogram matching,
crops, slice selection, and the papers' presets."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from components.data.layouts import read_brats, read_hcp
from components.data.nifti_io import load_volume
from components.models.autoencoders import SpatialVAE
from components.preprocess.geometry import crop_resize, linear_resize_reads
from components.preprocess.intensity import (
    HISTOGRAM_BINS,
    LANDMARK_PERCENTILES,
    OrderStatistics,
    n4_bias_correct,
    order_statistics,
    percentiles_of,
)
from components.preprocess.presets import PRESETS
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import prepare_volume, preprocess_volume, reference_landmarks
from pipelines.params import PreprocessParams


@pytest.fixture(scope="module")
def brats_case(phantom_roots):
    subject = read_brats(phantom_roots[1])[0]
    return load_volume(subject.image)[0], load_volume(subject.image)[1], load_volume(subject.segmentation)[0]


@pytest.fixture(scope="module")
def hcp_case(phantom_roots):
    subject = read_hcp(phantom_roots[0])[0]
    return load_volume(subject.image)[0], load_volume(subject.image)[1], load_volume(subject.brain_mask)[0]


def test_resampling_to_1mm_multiplies_slices_and_keeps_file_slice_numbers(brats_case):
    image, affine, seg = brats_case  # 3 mm phantoms
    native = preprocess_volume(image, affine, PreprocessSpec(size=32, min_brain_fraction=0.0), segmentation=seg)
    fine = preprocess_volume(image, affine, PreprocessSpec(size=32, min_brain_fraction=0.0, spacing_mm=1.0), segmentation=seg)
    assert len(fine.slice_numbers) == pytest.approx(3 * len(native.slice_numbers), abs=3)
    assert np.all(np.diff(np.sort(fine.slice_numbers)) >= 0)
    assert set(fine.slice_numbers) <= set(range(image.shape[2])) and set(native.slice_numbers) <= set(fine.slice_numbers)
    # Tumour voxel counts scale with the voxel area (3 mm -> 1 mm in plane: x 9).
    assert fine.tumour_pixels.sum() / 3 == pytest.approx(9 * native.tumour_pixels.sum(), rel=0.2)


def test_n4_removes_a_smooth_multiplicative_bias():
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 48)] * 3, indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    tissue = np.where(grid[0] > 0, 1.0, 0.6) * brain  # two flat tissues
    biased = tissue * np.exp(0.4 * grid[1]) + 0.0
    corrected = n4_bias_correct(biased.astype(np.float32), brain, (2.0, 2.0, 2.0))

    def spread(volume):  # coefficient of variation inside one tissue
        values = volume[brain & (grid[0] > 0.2)]
        return values.std() / values.mean()

    assert spread(corrected) < 0.5 * spread(biased)


def test_zscore_centres_the_brain(hcp_case):
    image, affine, mask = hcp_case
    volume = prepare_volume(image, affine, PreprocessSpec(normalisation="zscore"), brain_mask=mask)
    values = volume.normalise(volume.image[volume.brain])
    assert abs(values.mean()) < 1e-3 and values.std() == pytest.approx(1.0, abs=1e-3)
    out = preprocess_volume(image, affine, PreprocessSpec(size=32, normalisation="zscore"), brain_mask=mask)
    assert out.images.min() < 0 < out.images.max() and np.all(out.images[~out.brain] == 0)


def test_minus_one_to_one_range_has_a_minus_one_background(hcp_case):
    image, affine, mask = hcp_case
    out = preprocess_volume(image, affine, PreprocessSpec(size=32, value_range=(-1.0, 1.0)), brain_mask=mask)
    assert out.images.min() >= -1.0 and out.images.max() <= 1.0
    assert np.all(out.images[~out.brain] == -1.0)


def test_histogram_matching_maps_one_scan_onto_anothers_quantiles(hcp_case, brats_case):
    image, affine, mask = hcp_case
    spec = PreprocessSpec(size=32)
    landmarks = reference_landmarks(*brats_case[:2], spec)
    other = image**2.5  # a different contrast curve
    matched = prepare_volume(other, affine, replace(spec, histogram_landmarks=landmarks), brain_mask=mask)
    unmatched = prepare_volume(other, affine, spec, brain_mask=mask)
    quantiles = np.percentile(matched.normalise(matched.image[matched.brain]), [10, 25, 50, 75, 90])
    reference = np.interp([10, 25, 50, 75, 90], np.linspace(0, 100, 101), landmarks)
    assert np.abs(quantiles - reference).max() < 0.02
    assert np.abs(np.percentile(unmatched.normalise(unmatched.image[unmatched.brain]), [10, 25, 50, 75, 90])
                  - reference).max() > 0.05


def test_fixed_crop_keeps_millimetres_not_the_brain_box(hcp_case):
    image, affine, mask = hcp_case
    box = preprocess_volume(image, affine, PreprocessSpec(size=64), brain_mask=mask)
    wide = preprocess_volume(image, affine, PreprocessSpec(size=64, crop="fixed", crop_mm=400.0), brain_mask=mask)
    width = lambda out: out.brain[:, 0].any(axis=(0, 1)).sum()  # noqa: E731
    assert width(wide) == pytest.approx(width(box) * 0.5 * 170 / 200, rel=0.25)  # brain ~170-200 mm wide


def test_middle_mm_keeps_that_many_slices_around_the_brain_centre(hcp_case):
    image, affine, mask = hcp_case
    out = preprocess_volume(image, affine, PreprocessSpec(size=32, min_brain_fraction=0.0, middle_mm=30.0), brain_mask=mask)
    assert len(out.slice_numbers) == 10  # 30 mm of 3 mm slices
    everything = preprocess_volume(image, affine, PreprocessSpec(size=32, min_brain_fraction=0.0), brain_mask=mask)
    centre = np.median(everything.slice_numbers)
    assert abs(np.median(out.slice_numbers) - centre) <= 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_recipe_and_explicit_steps_override_it(name):
    params = PreprocessParams(preset=name)
    spec = params.spec()
    for key, value in PRESETS[name].items():
        if key != "histogram_reference":
            assert getattr(spec, key) == value
    assert PreprocessParams(preset=name, size=32).spec().size == 32
    assert PreprocessParams(preset=name, spacing_mm="native").spec().spacing_mm is None


def test_presets_describe_their_papers():
    assert PreprocessParams(preset="dual_vae_improved").spec().bias_correction
    assert PreprocessParams(preset="dual_vae_improved").reference == "tumour"
    assert PreprocessParams(preset="latent_constrained").spec().output_range is None
    intro = PreprocessParams(preset="introvae").spec()
    assert intro.spacing_mm == 1.0 and intro.size == 256 and intro.value_range == (-1.0, 1.0)


def test_an_unknown_preset_or_step_is_named():
    with pytest.raises(ValueError, match="unknown preprocessing preset 'baur'"):
        PreprocessParams(preset="baur")
    with pytest.raises(ValueError, match="unknown preprocessing steps: sharpen"):
        PreprocessSpec.from_dict({"size": 64, "sharpen": True})
    with pytest.raises(ValueError, match="needs crop_mm"):
        PreprocessSpec(crop="fixed")


def test_spec_round_trips_through_json(tmp_path):
    spec = PreprocessSpec(size=32, spacing_mm=1.0, normalisation="zscore", histogram_landmarks=(0.0, 0.5, 1.0), crop="fixed", crop_mm=180.0)
    spec.to_json(tmp_path / "spec.json")
    assert PreprocessSpec.from_json(tmp_path / "spec.json") == spec


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_decoder_output_lives_in_the_preprocessing_range(output_range):
    model = SpatialVAE(base_channels=4, latent_channels=4, downsamplings=2, output_range=output_range).eval()
    out = model.reconstruct(torch.randn(2, 1, 16, 16) * 5)
    assert output_range[0] <= out.min() and out.max() <= output_range[1]
    assert SpatialVAE(base_channels=4, latent_channels=4, downsamplings=2, output_range=None).output_range is None


def test_a_scan_prepared_in_threads_is_the_scan_prepared_in_one(brats_case, monkeypatch):
    image, affine, seg = brats_case
    spec = PreprocessSpec(size=32, histogram_landmarks=tuple(np.linspace(0.0, 1.0, 101) ** 2))
    slices = {}
    for threads in ("1", "3"):  # 3 slabs of uneven sizes
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        slices[threads] = preprocess_volume(image, affine, spec, segmentation=seg)
    one, three = slices["1"], slices["3"]
    assert len(one.images) > 3
    assert np.array_equal(one.images, three.images) and np.array_equal(one.brain, three.brain)
    assert np.array_equal(one.tumour, three.tumour) and np.array_equal(one.slice_numbers, three.slice_numbers)


def test_scans_prepared_in_threads_share_the_same_threads(brats_case, monkeypatch):
    """A worker that prepares hundreds of scans keeps its memory only if it keeps its threads."""
    image, affine, _ = brats_case
    monkeypatch.setenv("OMP_NUM_THREADS", "3")

    def slab_thread_ids() -> set[int]:
        return {thread.ident for thread in threading.enumerate() if thread.name.startswith("slab")}

    preprocess_volume(image, affine, PreprocessSpec(size=32))
    first = slab_thread_ids()
    preprocess_volume(image, affine, PreprocessSpec(size=32))
    assert first and slab_thread_ids() == first  # earlier tests' pools of other sizes count too


@pytest.mark.parametrize("box, size", [((slice(3, 40), slice(0, 33)), 16),   # shrink
                                       ((slice(-5, 30), slice(10, 45)), 64),  # grow, past the start
                                       ((slice(20, 60), slice(-7, 52)), 24)])  # past both ends
def test_a_linear_resize_reads_only_the_voxels_it_names(box, size):
    stack = np.random.default_rng(1).random((45, 48, 3), dtype=np.float32)
    rows, cols = (linear_resize_reads(b, size, n) for b, n in zip(box, stack.shape[:2]))
    garbage = np.full_like(stack, 1e6)
    garbage[np.ix_(rows, cols)] = stack[np.ix_(rows, cols)]
    assert np.array_equal(crop_resize(garbage, box, size, order=1, fill=-1.0), crop_resize(stack, box, size, order=1, fill=-1.0))
    fewer = np.full_like(stack, 1e6)  # and each of them is read: leave one out and the resize changes
    fewer[np.ix_(rows[1:], cols)] = stack[np.ix_(rows[1:], cols)]
    assert not np.array_equal(crop_resize(fewer, box, size, order=1, fill=-1.0), crop_resize(stack, box, size, order=1, fill=-1.0))


def test_percentiles_of_sorted_values_are_numpys(hcp_case):
    image, _, mask = hcp_case
    values = np.concatenate([image[mask > 0], np.full(1000, image.max())])  # ties, as a clipped tail has
    assert np.array_equal(percentiles_of(values, LANDMARK_PERCENTILES), np.percentile(values, LANDMARK_PERCENTILES))
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 10, 101, 1000, 12345):
        for dtype in (np.float32, np.float64, np.int16):
            drawn = rng.normal(0, 300, size)
            for values in (drawn.astype(dtype), np.round(drawn / 100).astype(dtype)):  # and many ties
                for percentiles in (LANDMARK_PERCENTILES, (1.0, 99.0), (0.5, 99.5), (0.0, 100.0)):
                    ours, numpys = percentiles_of(values, percentiles), np.percentile(values, percentiles)
                    assert ours.dtype == numpys.dtype and np.array_equal(ours, numpys), (size, dtype, percentiles)
    with_nan = np.array([1.0, np.nan, 3.0], np.float32)
    assert np.isnan(percentiles_of(with_nan, (1.0, 99.0))).all() and np.isnan(np.percentile(with_nan, (1.0, 99.0))).all()


def test_order_statistics_are_the_sorted_values_at_their_ranks():
    """The bucketed selection returns what a full sort would, whatever the values' spread: ties,
    a spike, an outlier that squeezes the rest into one bucket, negatives, integers, NaN."""
    rng = np.random.default_rng(1)
    size = 3 * HISTOGRAM_BINS
    drawn = rng.normal(500, 200, size)
    spiked = np.where(rng.random(size) < 0.5, 0.0, drawn)
    outlier = np.concatenate([drawn[:-1], [1e30]])
    cases = {"spread": drawn.astype(np.float32), "tied": np.round(drawn / 50).astype(np.float32),
             "spike": spiked.astype(np.float32), "outlier": outlier.astype(np.float32),
             "negative": (drawn - 2000).astype(np.float64), "int16": drawn.astype(np.int16),
             "near float32's limits": (drawn * 1e35).astype(np.float32)}
    ranks = np.unique(np.concatenate([[0, size - 1], rng.integers(0, size, 300)]))
    for name, values in cases.items():
        assert np.array_equal(order_statistics(values, ranks), np.sort(values)[ranks]), name
        for percentiles in (LANDMARK_PERCENTILES, (1.0, 99.0), (0.5, 99.5)):
            assert np.array_equal(percentiles_of(values, percentiles), np.percentile(values, percentiles)), name
    with_nan = cases["spread"].copy()
    with_nan[7] = np.nan
    assert np.isnan(percentiles_of(with_nan, (1.0, 99.0))).all()


def test_order_statistics_map_through_a_non_decreasing_transform():
    values = np.random.default_rng(2).gamma(2.0, 300.0, 2 * HISTOGRAM_BINS).astype(np.float32)
    clipped = lambda found: np.clip((found - 200.0) / 900.0, 0.0, 1.0).astype(np.float32)  # noqa: E731 (ties at both ends)
    brain = OrderStatistics.of(values, LANDMARK_PERCENTILES)
    assert np.array_equal(brain.mapped(clipped).percentiles(LANDMARK_PERCENTILES),
                          np.percentile(clipped(values), LANDMARK_PERCENTILES))


@pytest.mark.parametrize("normalisation", ["percentile", "zscore"])
def test_a_scan_in_either_memory_order_gives_the_same_slices(brats_case, normalisation):
    """NIfTI voxels arrive in F order and are read in it where the order does not matter: the
    slices come out bit for bit as from the same voxels in C order."""
    image, affine, seg = brats_case
    spec = PreprocessSpec(size=32, normalisation=normalisation, histogram_landmarks=tuple(np.linspace(0.0, 1.0, 101) ** 2))
    fortran, c_order = (preprocess_volume(order(image), affine, spec, segmentation=seg)
                        for order in (np.asfortranarray, np.ascontiguousarray))
    assert np.asfortranarray(image).flags.f_contiguous and not np.ascontiguousarray(image).flags.f_contiguous
    for field in ("images", "brain", "tumour", "brain_pixels", "tumour_pixels", "slice_numbers"):
        assert np.array_equal(getattr(fortran, field), getattr(c_order, field)), field
