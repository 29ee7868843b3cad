"""Thresholds from healthy scans: slices and volumes at one percentile, pixels at their own."""

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import calibrate
from pipelines.sites import calibration_draws, site_names


def test_slice_volume_and_pixel_thresholds_are_conformal_at_their_own_rates():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    smoothed = rng.random((200, 1, 8, 8)).astype(np.float32)
    brain = np.ones_like(smoothed, bool)
    index = pd.DataFrame({"subject": np.repeat([f"s{i}" for i in range(20)], 10)})
    found = calibrate({"index": index, "scores": scores, "smoothed": smoothed, "brain": brain}, 95.0, 99.5)
    assert found.slice_threshold == np.sort(scores)[191 - 1]  # ceil(201 x 0.95) = 191
    assert found.volume_threshold == np.sort(scores.reshape(20, 10).max(1))[20 - 1]  # ceil(21 x 0.95) = 20
    assert found.pixel_threshold == np.sort(smoothed.ravel())[12737 - 1]  # ceil(12801 x 0.995) = 12737
    assert found.scans == 20
    assert found.guaranteed_rates["slice"] == pytest.approx(1 - 191 / 201, abs=1e-6)
    assert found.guaranteed_rates["volume"] == pytest.approx(1 / 21, abs=1e-6)  # 20 scans: 4.8 %, within 5 %


def test_thresholds_of_a_tiny_split_by_hand():
    """Two healthy subjects of five slices: slice scores 1-5 and 2-10 in steps of 2. At a 50 %
    target the slice threshold is the ceil(11 x 0.5) = 6th smallest of 1 2 2 3 4 4 5 6 8 10;
    two volumes (5 and 10) need rank ceil(3 x 0.5) = 2, the larger; pixels 0-9 at 10 % need
    rank ceil(11 x 0.9) = 10, the largest."""
    index = pd.DataFrame({"subject": ["a"] * 5 + ["b"] * 5})
    scores = np.array([1, 2, 3, 4, 5, 2, 4, 6, 8, 10], dtype=float)
    smoothed = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    found = calibrate({"index": index, "scores": scores, "smoothed": smoothed, "brain": smoothed >= 0}, 50.0, 90.0)
    assert found.slice_threshold == 4.0  # the 6th: 1 2 2 3 4 [4] 5 6 8 10
    assert found.volume_threshold == 10.0
    assert found.pixel_threshold == 9.0
    assert found.guaranteed_rates == pytest.approx({"slice": 5 / 11, "volume": 1 / 3, "pixel": 1 / 11}, abs=1e-6)
    assert found.reference_scores == scores.tolist()


def test_a_project_without_other_sites_has_an_empty_sites_folder_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "sites").mkdir()
    assert site_names(tmp_path / "sites") == []
    (tmp_path / "sites" / "hospital_b").mkdir()
    (tmp_path / "sites" / ".cache").mkdir()
    assert site_names(tmp_path / "sites") == ["hospital_b"]
    with pytest.raises(FileNotFoundError, match="make it an empty folder"):
        site_names(tmp_path / "nowhere")


def test_a_broken_sites_file_is_named_and_a_site_is_added_with_its_scans_hash(tmp_path):
    from pipelines.site_store import add_site, read_sites

    sites = tmp_path / "sites.yaml"
    assert read_sites(sites) == {}  # no file: no sites
    for text, message in (("sites: [a, b", "not valid YAML"), ("sites: [a, b]", "expected `sites:"),
                          ("sites:\n  Bad Name: {healthy: x}\n", "site name 'Bad Name'")):
        sites.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_sites(sites)
    sites.unlink()
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.nii.gz").write_bytes(b"one")
    first = add_site(sites, "north", scans)["scans_sha256"]
    (scans / "a.nii.gz").write_bytes(b"two")
    add_site(sites, "south", scans)
    listed = read_sites(sites)
    assert set(listed) == {"north", "south"} and listed["north"]["healthy"] == str(scans.resolve())
    assert listed["north"]["scans_sha256"] == first != listed["south"]["scans_sha256"]  # the scans' version, per site


def scans(count: int, slices: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Healthy scans of one site whose slice scores are exchangeable: each scan its own level."""
    rng = np.random.default_rng(seed)
    levels = rng.normal(size=count)
    scores = (levels[:, None] + rng.normal(size=(count, slices))).ravel()
    return scores, np.repeat([f"healthy/{i:03d}" for i in range(count)], slices)


def test_over_calibration_draws_the_volumes_flagged_average_what_the_scans_guarantee():
    """Calibrating on 10 of 40 exchangeable scans, the threshold is the highest of 10 volumes: the
    other scans' volumes lie above it 1/11 of the time on average, though one draw may flag many."""
    scores, subjects = scans(40, 30, seed=0)
    draws = calibration_draws(scores, subjects, count=10, target=0.05, draws=2000)
    volumes = draws["healthy_volume_false_alarm_rate"]
    assert draws["healthy_scans"] == 40 and draws["calibration_scans"] == 10
    assert volumes["mean"] == pytest.approx(1 / 11, abs=0.01)
    assert volumes["p05"] == 0.0 and volumes["p95"] > 0.2 and 0.2 < volumes["draws_above_target"] < 0.8
    slices = draws["healthy_slice_false_alarm_rate"]
    assert 0.02 < slices["mean"] < 0.09 and slices["p05"] < slices["p50"] < slices["p95"]


def test_calibration_draws_are_repeatable_and_test_only_the_scans_that_did_not_calibrate():
    scores, subjects = scans(12, 5, seed=1)
    first, again = (calibration_draws(scores, subjects, count=11, target=0.05, draws=50) for _ in range(2))
    assert first == again
    # 11 of 12 calibrate, and the highest of 11 volumes sits above the 12th unless it is the highest of all
    rates = first["healthy_volume_false_alarm_rate"]
    assert set(np.round([rates["p05"], rates["p95"]], 6)) <= {0.0, 1.0} and rates["mean"] < 0.3


def test_calibration_draws_need_scans_left_to_test():
    scores, subjects = scans(4, 3, seed=2)
    for count in (0, 4):
        with pytest.raises(ValueError, match=f"calibration draws need 1 to 3 of the 4 healthy scans, got {count}"):
            calibration_draws(scores, subjects, count=count, target=0.05)
