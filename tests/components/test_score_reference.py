"""Slice scores relative to their scan: what makes a threshold travel between sites."""

import numpy as np
import pytest

from components.models.bundle import Calibration
from components.models.inference import Scored, relative_to_scan, with_reference


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
    scored = Scored(np.zeros((2, 1, 4, 4)), np.array([1.0, 3.0]), {"map_mean": np.array([0.1, 0.2])})
    assert with_reference(scored, "none") is scored
    relative = with_reference(scored, "scan_median")
    np.testing.assert_allclose(relative.scores, [0.5, 1.5])
    assert relative.alternatives is scored.alternatives  # alternatives stay the detector's own
    with pytest.raises(ValueError, match="scan_median"):
        with_reference(scored, "scan_mean")


def test_a_calibration_with_an_unknown_rule_is_refused_when_it_is_built():
    with pytest.raises(ValueError, match="calibration.score_reference 'scan_mean'"):
        Calibration(98.0, 0.1, 0.2, 0.3, [0.1], score_reference="scan_mean")
