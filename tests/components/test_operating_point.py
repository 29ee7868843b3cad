"""Operating-point metrics and their bootstrap intervals over subjects, by hand."""

import numpy as np
import pandas as pd
import pytest

from components.metrics.operating_point import detection_metrics, resampled_subjects, with_intervals


def cohort(n_healthy: int, n_tumour: int, separation: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ten slices per subject; a tumour subject's first four are abnormal, scores shifted by ``separation``."""
    rng = np.random.default_rng(seed)
    slices, subjects = [], []
    for number in range(n_healthy + n_tumour):
        name, tumour = f"s{number}", number >= n_healthy
        abnormal = np.arange(10) < 4 if tumour else np.zeros(10, bool)
        score = rng.normal(0, 1, 10) + separation * abnormal
        slices.append(pd.DataFrame({"subject": name, "abnormal": abnormal, "rated": True, "tumour_free": ~abnormal,
                                    "score": score}))
        subjects.append({"subject": name, "cohort": "tumour" if tumour else "healthy", "volume_score": score.max(),
                         "dice": 0.5 if tumour else np.nan})
    return pd.concat(slices, ignore_index=True), pd.DataFrame(subjects)


def test_false_alarms_and_sensitivity_at_the_threshold_by_hand():
    slices = pd.DataFrame({"subject": ["h", "h", "t", "t", "t"], "abnormal": [False, False, False, True, True],
                           "rated": True, "tumour_free": [True, True, True, False, False],
                           "score": [0.1, 0.9, 0.7, 0.8, 0.2]})
    subjects = pd.DataFrame({"subject": ["h", "t"], "cohort": ["healthy", "tumour"], "volume_score": [0.9, 0.8],
                             "dice": [np.nan, 0.4]})
    metrics = detection_metrics(slices, subjects, slice_threshold=0.5, volume_threshold=0.85)
    assert metrics["slice_false_alarm_rate"] == pytest.approx(2 / 3)  # 0.9 and 0.7 of the three tumour-free
    assert metrics["healthy_slice_false_alarm_rate"] == pytest.approx(1 / 2)  # 0.9 of h's two
    assert metrics["slice_sensitivity"] == pytest.approx(1 / 2)
    assert metrics["volume_false_alarm_rate"] == 1.0 and metrics["volume_sensitivity"] == 0.0
    assert metrics["dice_mean"] == pytest.approx(0.4)
    assert metrics["slice_auroc"] == pytest.approx(3 / 6)  # 0.8 beats 0.1 and 0.7; 0.2 beats 0.1


def test_every_rate_carries_its_count_and_exact_interval():
    """Four healthy subjects, none flagged: 0 of 4 reads [0, 0.60], where the bootstrap says [0, 0]."""
    slices = pd.DataFrame({"subject": [f"h{i}" for i in range(4)] + ["t"], "abnormal": [False] * 4 + [True],
                           "rated": True, "tumour_free": [True] * 4 + [False], "score": [0.1, 0.2, 0.3, 0.4, 0.9]})
    subjects = pd.DataFrame({"subject": [f"h{i}" for i in range(4)] + ["t"], "cohort": ["healthy"] * 4 + ["tumour"],
                             "volume_score": [0.1, 0.2, 0.3, 0.4, 0.9], "dice": [np.nan] * 4 + [0.5]})
    result = with_intervals(slices, subjects, slice_threshold=0.5, volume_threshold=0.5, samples=100)
    assert result["volume_false_alarm_rate"] == 0.0 and result["counts"]["volume_false_alarm_rate"] == {"flagged": 0, "of": 4}
    assert result["ci95"]["volume_false_alarm_rate"] == pytest.approx({"low": 0.0, "high": 0.6024}, abs=1e-4)
    assert result["ci95"]["slice_false_alarm_rate"] == pytest.approx({"low": 0.0, "high": 0.6024}, abs=1e-4)
    assert result["counts"]["volume_sensitivity"] == {"flagged": 1, "of": 1}
    assert result["ci95"]["volume_sensitivity"]["low"] == pytest.approx(0.025)


def test_draws_keep_each_cohort_at_its_size():
    strata = [np.array(["a", "b", "c"]), np.array(["x", "y"])]
    for drawn in resampled_subjects(strata, 20, seed=1):
        assert len(drawn) == 5 and set(drawn[:3]) <= {"a", "b", "c"} and set(drawn[3:]) <= {"x", "y"}


def test_intervals_hold_the_estimate_and_shrink_with_more_subjects():
    widths = {}
    for n in (6, 48):
        slices, subjects = cohort(n, n, separation=1.5, seed=n)
        result = with_intervals(slices, subjects, slice_threshold=1.0, volume_threshold=2.0, samples=300)
        for name in ("slice_auroc", "slice_false_alarm_rate", "volume_false_alarm_rate", "slice_sensitivity"):
            low, high = result["ci95"][name]["low"], result["ci95"][name]["high"]
            assert low <= result[name] <= high
        widths[n] = result["ci95"]["slice_auroc"]["high"] - result["ci95"]["slice_auroc"]["low"]
    assert widths[48] < 0.6 * widths[6]
