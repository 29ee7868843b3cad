"""Slice scores relative to their scan or to their own slice's residual: what makes a threshold
travel between sites."""

import numpy as np
import pytest
import torch

from components.models.calibration import Calibration
from components.models.detector import Detector, focal_score
from components.models.inference import Scored, relative_to_level, relative_to_scan, score_slices, with_reference
from components.models.registry import DETECTORS, build_detector
from tests.components.test_detectors import batch, tiny


def test_each_score_is_divided_by_its_own_scans_median():
    scores = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0])
    scans = np.array(["a", "a", "a", "b", "b", "b", "b"])
    np.testing.assert_allclose(relative_to_scan(scores, scans), [0.5, 1.0, 1.5, 0.4, 0.8, 1.2, 1.6])
    np.testing.assert_allclose(relative_to_scan(scores[:3]), [0.5, 1.0, 1.5])  # no ids: one scan


def test_a_site_that_scales_a_whole_scans_scores_leaves_them_unchanged():
    rng = np.random.default_rng(0)
    scores, scans = rng.gamma(2.0, 0.05, 300), np.repeat(np.arange(10), 30)
    gain = np.repeat(rng.uniform(0.5, 4.0, 10), 30)  # another scanner's noise, blur or contrast, per scan
    np.testing.assert_allclose(relative_to_scan(scores * gain, scans), relative_to_scan(scores, scans), rtol=1e-5)


def test_a_scan_of_zero_scores_stays_zero_and_an_unknown_rule_is_named():
    assert np.all(relative_to_scan(np.zeros(4)) == 0)
    scored = Scored(np.zeros((2, 1, 4, 4)), np.array([1.0, 3.0]), {"map_mean": np.array([0.1, 0.2])}, np.array([0.5, 0.0]))
    assert with_reference(scored, "none") is scored
    relative = with_reference(scored, "scan_median")
    np.testing.assert_allclose(relative.scores, [0.5, 1.5])
    assert relative.alternatives is scored.alternatives  # alternatives stay the detector's own
    with pytest.raises(ValueError, match="scan_median"):
        with_reference(scored, "scan_mean")


def test_a_calibration_with_an_unknown_rule_is_refused_when_it_is_built():
    with pytest.raises(ValueError, match="calibration.score_reference 'scan_mean'"):
        Calibration(98.0, 0.1, 0.2, 0.3, [0.1], score_reference="scan_mean")
    with pytest.raises(ValueError, match="calibration.pixel_median 4: expected an odd whole number"):
        Calibration(98.0, 0.1, 0.2, 0.3, [0.1], pixel_median=4)
    with pytest.raises(ValueError, match="calibration.median_shape 'sphere': expected one of cubic, millimetres"):
        Calibration(98.0, 0.1, 0.2, 0.3, [0.1], median_shape="sphere")


def test_a_slice_scored_against_its_own_residual_ignores_a_scanners_gain_but_not_a_lesion():
    """The focal score over the map's median inside the brain: a map raised as a whole (another
    site's noise or contrast) scores as before; a bright blob on the same map still stands out."""
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.gamma(2.0, 0.05, (6, 1, 32, 32)).astype(np.float32))
    brain = torch.zeros(6, 1, 32, 32, dtype=torch.bool)
    brain[..., 4:28, 4:28] = True
    maps = maps * brain
    detector = build_detector("dense_ae", base_channels=4, latent_size=4, downsamplings=2, image_size=32)

    def relative(m):
        return relative_to_level(focal_score(m, brain, 0.02).numpy(), detector.map_level(m, brain).numpy())

    np.testing.assert_allclose(relative(maps * 3.0), relative(maps), rtol=1e-5)
    lesion = maps.clone()
    lesion[:3, :, 12:16, 12:16] += 1.0  # 16 of 576 brain pixels: the median barely moves
    assert np.all(relative(lesion)[:3] > 2 * relative(maps)[:3])
    np.testing.assert_allclose(relative(lesion)[3:], relative(maps)[3:])


def test_levels_are_the_maps_median_in_the_brain_and_a_slice_without_residual_scores_zero():
    detector = build_detector("dense_ae", base_channels=4, latent_size=4, downsamplings=2, image_size=32)
    images = np.random.default_rng(1).uniform(0, 1, (4, 1, 32, 32)).astype(np.float32)
    brain = np.zeros_like(images, bool)
    brain[..., 8:24, 8:24] = True
    scored = score_slices(detector, images, brain)
    expected = [np.quantile(m[b], 0.5, method="lower") for m, b in zip(scored.maps, brain)]  # torch: the lower middle
    np.testing.assert_allclose(scored.levels, expected, rtol=1e-5)
    relative = with_reference(scored, "brain_median")
    np.testing.assert_allclose(relative.scores, scored.scores / scored.levels, rtol=1e-5)
    np.testing.assert_allclose(relative_to_level([0.0, 2.0], [0.0, 0.5]), [0.0, 4.0])



@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_only_a_score_read_off_the_map_is_divided_by_the_maps_level(name):
    """A paper's own slice score (a latent distance, a patch metric over Z-scored maps) keeps its
    definition: its level is 1; the focal score's level is the map's median in the brain."""
    detector = tiny(name).eval()
    slices = batch(4)
    scored = score_slices(detector, slices.image.numpy(), slices.brain.numpy())
    if type(detector).slice_score is Detector.slice_score:
        assert np.all(scored.levels > 0)
        np.testing.assert_allclose(scored.levels, [np.quantile(m[b], 0.5, method="lower")
                                                   for m, b in zip(scored.maps, slices.brain.numpy())], rtol=1e-5)
    else:
        np.testing.assert_array_equal(scored.levels, 1.0)
        np.testing.assert_allclose(with_reference(scored, "brain_median").scores, scored.scores)
