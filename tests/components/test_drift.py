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


def test_a_small_reference_reads_stable_on_its_own_distribution_and_major_on_a_shift():
    # 77 reference scores, 200 in the window: over deciles PSI's sampling noise alone averages
    # about 9 * (1/77 + 1/200) = 0.16; fewer, fuller bins keep it under 0.1
    same = [psi(draw(77, seed), draw(200, seed + 1000)) for seed in range(200)]
    shifted = [psi(draw(77, seed), draw(200, seed + 1000, shift=float(REFERENCE.std()))) for seed in range(200)]
    assert np.mean(same) < 0.05 and np.quantile(same, 0.99) < 0.25
    assert np.quantile(shifted, 0.01) > 0.25


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


def scans(count: int, seed: int, shift: float = 0.0, slices: int = 50) -> list[np.ndarray]:
    """Healthy scans as they come: a scan's own offset (a quarter of the variance) and slice noise
    correlated along it, ``shift`` reference standard deviations up."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        noise = rng.normal(size=slices)
        for k in range(1, slices):
            noise[k] = 0.6 * noise[k - 1] + 0.8 * noise[k]
        out.append(rng.normal(0, 0.5) + np.sqrt(0.75) * noise + shift)
    return out


def test_the_cusum_counts_scans_not_slices_quiet_on_healthy_traffic_and_soon_after_a_shift():
    reference = np.concatenate(scans(40, seed=0))
    healthy = scans(2000, seed=1)
    by_scan = DriftMonitor(reference, 2.0)
    assert sum(by_scan.update(scan) for scan in healthy) <= 2  # 100,000 healthy slices
    by_slice = Cusum(float(reference.mean()), float(reference.std()), k=0.5, h=12)
    assert sum(by_slice.update(scan) for scan in healthy) > 20  # what a CUSUM over slices raised
    shifted = DriftMonitor(reference, 2.0)
    first = next(i for i, scan in enumerate(scans(100, seed=2, shift=1.0), 1) if shifted.update(scan))
    assert first <= 20  # one standard deviation up: caught within a few scans
    assert sum(shifted.update(np.full(50, -3.0)) for _ in range(3)) >= 1  # a drop is drift too


def test_a_window_without_scans_for_stale_after_s_is_emptied():
    monitor = DriftMonitor(REFERENCE, THRESHOLD, window=200, min_scores=50, stale_after_s=60)
    monitor.update(draw(100, seed=9), now=1000.0)
    assert not monitor.expire(now=1059.0) and monitor.report().window == 100
    assert monitor.expire(now=1060.0) and monitor.report() is None and not monitor.scores
    assert not monitor.expire(now=5000.0)  # nothing left to expire


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
