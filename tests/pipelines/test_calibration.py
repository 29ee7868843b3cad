"""Thresholds from healthy scans: slices and volumes at one percentile, pixels at their own."""

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import calibrate
from pipelines.sites import site_names


def test_slice_volume_and_pixel_thresholds_take_their_own_percentiles():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    smoothed = rng.random((200, 1, 8, 8)).astype(np.float32)
    brain = np.ones_like(smoothed, bool)
    index = pd.DataFrame({"subject": np.repeat([f"s{i}" for i in range(20)], 10)})
    found = calibrate({"index": index, "scores": scores, "smoothed": smoothed, "brain": brain}, 95.0, 99.5)
    assert found.slice_threshold == pytest.approx(np.percentile(scores, 95.0))
    assert found.volume_threshold == pytest.approx(np.percentile(scores.reshape(20, 10).max(1), 95.0))
    assert found.pixel_threshold == pytest.approx(np.percentile(smoothed, 99.5))
    assert (smoothed > found.pixel_threshold).mean() == pytest.approx(0.005, abs=0.001)


def test_thresholds_of_a_tiny_split_by_hand():
    """Two healthy subjects of five slices: slice scores 1-5 and 2-10 in steps of 2."""
    index = pd.DataFrame({"subject": ["a"] * 5 + ["b"] * 5})
    scores = np.array([1, 2, 3, 4, 5, 2, 4, 6, 8, 10], dtype=float)
    smoothed = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    found = calibrate({"index": index, "scores": scores, "smoothed": smoothed, "brain": smoothed >= 0}, 50.0, 90.0)
    assert found.slice_threshold == 4.0  # sorted 1 2 2 3 4 | 4 5 6 8 10
    assert found.volume_threshold == 7.5  # the subjects' highest slices, 5 and 10
    assert found.pixel_threshold == pytest.approx(8.1)  # pixels 0-9
    assert found.reference_scores == scores.tolist()


def test_a_project_without_other_sites_has_an_empty_sites_folder_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "sites").mkdir()
    assert site_names(tmp_path / "sites") == []
    (tmp_path / "sites" / "hospital_b").mkdir()
    (tmp_path / "sites" / ".cache").mkdir()
    assert site_names(tmp_path / "sites") == ["hospital_b"]
    with pytest.raises(FileNotFoundError, match="make it an empty folder"):
        site_names(tmp_path / "nowhere")
