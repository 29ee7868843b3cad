"""Split-conformal thresholds and exact binomial intervals, against hand-worked values."""

import numpy as np
import pytest

from components.metrics.conformal import conformal_rank, conformal_threshold, exact_interval, scans_needed


def test_the_conformal_rank_by_hand():
    # ceil((n + 1)(1 - alpha)): 10 scores at 10 % -> ceil(9.9) = 10; 19 at 5 % -> exactly 19 (no float creep to 20)
    assert conformal_rank(10, 0.10) == 10
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(99, 0.05) == 95
    assert conformal_rank(4, 0.05) == 5  # more than there are: no threshold of 4 scores holds 5 %


def test_a_threshold_of_ten_scans_and_what_it_guarantees():
    found = conformal_threshold([7, 3, 9, 1, 5, 2, 8, 4, 10, 6], 0.10)
    assert found.threshold == 10.0 and found.rank == 10 and found.n == 10
    assert found.guaranteed_rate == pytest.approx(1 / 11)  # within the 10 % asked
    at_20 = conformal_threshold(np.arange(1.0, 11.0), 0.20)
    assert at_20.threshold == 9.0 and at_20.guaranteed_rate == pytest.approx(2 / 11)  # ceil(8.8) = 9th smallest


def test_too_few_scores_give_the_largest_and_say_what_it_guarantees():
    found = conformal_threshold([0.4, 0.1, 0.3, 0.2], 0.05)
    assert found.threshold == 0.4 and found.guaranteed_rate == pytest.approx(0.2)  # 1 / (4 + 1), not 5 %
    assert scans_needed(0.05) == 19 and scans_needed(0.10) == 9 and scans_needed(0.02) == 49


def test_the_guarantee_holds_on_fresh_healthy_scores():
    """Across many calibrations of 10 scores each, a new score lands above the threshold at most
    1/11 of the time on average (a percentile of the 10 would flag about 1/6 at 10 %)."""
    rng = np.random.default_rng(0)
    calibrations, fresh = rng.normal(size=(4000, 10)), rng.normal(size=4000)
    flagged = [new > conformal_threshold(scores, 0.10).threshold for scores, new in zip(calibrations, fresh)]
    percentile = [new > np.percentile(scores, 90) for scores, new in zip(calibrations, fresh)]
    assert np.mean(flagged) <= 1 / 11 + 0.01
    assert np.mean(percentile) > 0.14


def test_bad_calibration_scores_are_refused_by_name():
    with pytest.raises(ValueError, match="no calibration scores"):
        conformal_threshold([], 0.05)
    with pytest.raises(ValueError, match="finite"):
        conformal_threshold([1.0, float("nan")], 0.05)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        conformal_threshold([1.0], 0.0)


def test_exact_intervals_by_hand():
    low, high = exact_interval(0, 4)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 4))  # 0.602
    low, high = exact_interval(4, 4)
    assert low == pytest.approx(0.025 ** (1 / 4)) and high == 1.0
    low, high = exact_interval(3, 30)  # Clopper-Pearson from beta quantiles: [0.0211, 0.2653]
    assert low == pytest.approx(0.02112, abs=1e-4) and high == pytest.approx(0.26528, abs=1e-4)
    assert all(np.isnan(exact_interval(0, 0)))
