"""Drift statistics against known shifts: none, a location shift, a scale change, a new mode."""

import numpy as np
import pytest

from components.monitoring.drift import Cusum, DriftMonitor, fraction_above, ks_statistic, psi, wasserstein
from components.monitoring.shifts import SHIFTS

RNG = np.random.default_rng(0)
# slice scores are positive and right-skewed, like the detectors' residual scores
REFERENCE = RNG.lognormal(mean=-3.0, sigma=0.3, size=2000)
THRESHOLD = float(np.percentile(REFERENCE, 98))


def draw(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(-3.0, 0.3, n) * scale + shift


def test_psi_of_everything_in_one_decile_matches_the_formula():
    reference = np.arange(1000.0)  # deciles of exactly 100 scores
    current = np.full(50, 950.0)  # all in the top decile, none elsewhere
    floor = 1e-4
    expected = 9 * (floor - 0.1) * np.log(floor / 0.1) + (1 - 0.1) * np.log(1 / 0.1)
    assert psi(reference, current) == pytest.approx(expected, rel=1e-3)


def test_exact_values_of_the_other_statistics():
    assert wasserstein(REFERENCE, REFERENCE + 0.01) == pytest.approx(0.01)
    assert ks_statistic(REFERENCE, REFERENCE + 10) == 1.0
    assert fraction_above(np.array([0.1, 0.2, 0.3, 0.4]), 0.25) == 0.5
    assert fraction_above(np.array([]), 0.25) == 0.0


@pytest.mark.parametrize(
    ("case", "shift", "scale", "drifted"),
    [
        ("same distribution", 0.0, 1.0, False),
        ("location shift of one reference std", float(REFERENCE.std()), 1.0, True),
        ("intensity scale x1.5", 0.0, 1.5, True),
        ("intensity scale x0.7", 0.0, 0.7, True),
    ],
)
def test_window_statistics_tell_a_shift_from_none(case, shift, scale, drifted):
    monitor = DriftMonitor(REFERENCE, THRESHOLD, window=500, min_scores=100)
    monitor.update(draw(500, seed=1, shift=shift, scale=scale))
    report = monitor.report()
    assert report.window == 500
    assert (report.psi > 0.25) is drifted, case
    assert (report.ks > 0.2) is drifted, case
    if not drifted:
        assert report.psi < 0.1 and report.wasserstein < 0.005
        assert report.fraction_above == pytest.approx(report.expected_fraction_above, abs=0.03)


def test_more_anomalous_scans_raise_the_fraction_above_threshold():
    monitor = DriftMonitor(REFERENCE, THRESHOLD)
    mixed = np.concatenate([draw(400, seed=2), draw(100, seed=3, scale=3.0)])  # one slice in five lit up
    monitor.update(mixed)
    report = monitor.report()
    assert report.expected_fraction_above == pytest.approx(0.02, abs=0.005)
    assert report.fraction_above > 0.15


def test_the_window_slides_and_a_report_waits_for_enough_scores():
    monitor = DriftMonitor(REFERENCE, THRESHOLD, window=200, min_scores=50)
    monitor.update(draw(49, seed=4))
    assert monitor.report() is None
    monitor.update(draw(200, seed=5, scale=2.0))  # the shifted scores push the first ones out
    assert monitor.report().window == 200 and monitor.report().ks > 0.7
    monitor.update([np.nan, np.inf])  # non-finite scores are not data
    assert monitor.report().window == 200


def test_cusum_is_quiet_on_in_distribution_scores_and_fires_soon_after_a_shift():
    monitor = DriftMonitor(REFERENCE, THRESHOLD)
    assert monitor.update(draw(5000, seed=6)) == 0
    cusum = Cusum(float(REFERENCE.mean()), float(REFERENCE.std()))
    shifted = draw(200, seed=7, shift=float(REFERENCE.std()))
    first = next(i for i in range(1, 201) if cusum.update(shifted[i - 1:i]))
    assert first <= 60  # one std up: 51 slices for this draw
    assert monitor.update(draw(200, seed=8, scale=0.5)) >= 2  # a drop is drift too, events keep counting


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": np.ones(5)}, "at least 10 finite scores"),
        ({"reference": np.full(100, 0.1)}, "all equal"),
        ({"window": 50, "min_scores": 100}, "min_scores <= window"),
        ({"cusum_h": 0}, "h > 0"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    settings = {"reference": REFERENCE, "threshold": THRESHOLD, **kwargs}
    with pytest.raises(ValueError, match=message):
        DriftMonitor(settings.pop("reference"), settings.pop("threshold"), **settings)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shifts_keep_shape_and_background(name):
    image = np.zeros((20, 20, 10), np.float32)
    image[5:15, 5:15, 2:8] = np.random.default_rng(1).uniform(0.2, 1.0, (10, 10, 6))
    shifted = SHIFTS[name](image)
    assert shifted.shape == image.shape and shifted.dtype == np.float32
    assert (shifted[image == 0] == 0).all() and not np.allclose(shifted, image)
