"""The monitor's bookkeeping, without Ray: one registry, one drift window, the served model, and
windows emptied once traffic stops."""

import time

import numpy as np
import pytest

from serving.monitor import Monitor
from components.monitoring.drift import DriftSettings

REFERENCE = list(np.random.default_rng(0).lognormal(-3, 0.3, 400))


def description(version: str) -> dict:
    return {"name": "brainomaly-detector", "version": version, "detector": "spatial_vae", "slice_threshold": 0.08}


def sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


@pytest.fixture()
def monitor():
    return Monitor.func_or_class(DriftSettings(window=100, min_scores=20))


def test_scores_fill_the_window_and_a_shift_shows(monitor):
    monitor.model_loaded(description("1"), REFERENCE)
    monitor.record_scores("1", list(np.random.default_rng(1).lognormal(-3, 0.3, 100)))
    calm = monitor.exposition().decode()
    assert sample(calm, "brainomaly_drift_window") == 100 and sample(calm, "brainomaly_drift_psi") < 0.25
    for scan in np.split(np.random.default_rng(2).lognormal(-3, 0.3, 100) * 2, 2):  # two shifted scans
        monitor.record_scores("1", list(scan))
    shifted = monitor.exposition().decode()
    assert sample(shifted, "brainomaly_drift_psi") > 0.25 and sample(shifted, "brainomaly_drift_events_total") >= 1
    assert sample(shifted, "brainomaly_slice_score_count") == 200


def test_a_new_version_starts_a_fresh_window_and_late_old_scores_stay_out(monitor):
    monitor.model_loaded(description("1"), REFERENCE)
    monitor.record_scores("1", [0.05] * 50)
    monitor.model_loaded(description("2"), REFERENCE)
    monitor.record_scores("1", [0.5] * 50)  # a replica still on version 1
    text = monitor.exposition().decode()
    assert sample(text, "brainomaly_drift_window") == 0
    assert 'version="2"' in text and 'version="1"' not in text
    assert monitor.served_model()["model"]["version"] == "2"


def test_a_failed_load_is_shown_until_a_version_loads(monitor):
    assert monitor.served_model() == {"model": None, "last_load_error": None}
    monitor.model_load_failed("3", "version 3: no bundle")
    assert sample(monitor.exposition().decode(), "brainomaly_model_load_failed") == 1
    assert monitor.served_model()["last_load_error"] == "version 3: no bundle"
    monitor.model_loaded(description("1"), REFERENCE)
    assert sample(monitor.exposition().decode(), "brainomaly_model_load_failed") == 0


def test_each_site_has_its_own_threshold_and_drift_window(monitor):
    site_description = {**description("1"), "sites": {"b": {"slice_threshold": 0.2, "calibration_run": "r1"}}}
    monitor.model_loaded(site_description, REFERENCE, {"b": [s * 2 for s in REFERENCE]})
    monitor.record_scores("1", list(np.random.default_rng(1).lognormal(-3, 0.3, 100) * 2), "b")  # site b's own level
    text = monitor.exposition().decode()
    assert sample(text, 'brainomaly_slice_threshold{site="b"}') == 0.2 and sample(text, 'brainomaly_slice_threshold{site=""}') == 0.08
    assert sample(text, 'brainomaly_drift_window{site="b"}') == 100 and sample(text, 'brainomaly_drift_psi{site="b"}') < 0.25
    assert sample(text, 'brainomaly_drift_window{site=""}') == 0  # the training calibration saw none of them
    # a replica reporting the same version again keeps the windows; a recalibration restarts the site's
    monitor.model_loaded(site_description, REFERENCE, {"b": [s * 2 for s in REFERENCE]})
    assert sample(monitor.exposition().decode(), 'brainomaly_drift_window{site="b"}') == 100
    recalibrated = {**description("1"), "sites": {"b": {"slice_threshold": 0.3, "calibration_run": "r2"}}}
    monitor.model_loaded(recalibrated, REFERENCE, {"b": [s * 2 for s in REFERENCE]})
    text = monitor.exposition().decode()
    assert sample(text, 'brainomaly_drift_window{site="b"}') == 0 and sample(text, 'brainomaly_slice_threshold{site="b"}') == 0.3


def test_a_window_that_saw_no_scan_for_stale_after_s_stops_reporting():
    monitor = Monitor.func_or_class(DriftSettings(window=100, min_scores=20, stale_after_s=1.0))
    rng = np.random.default_rng(0)
    monitor.model_loaded(description("3"), rng.normal(size=200).tolist())
    monitor.record_scores("3", (rng.normal(size=50) + 3).tolist())  # a shifted scan: the gauges light up
    lit = monitor.exposition().decode()
    assert sample(lit, 'brainomaly_drift_window{site=""}') == 50 and sample(lit, 'brainomaly_drift_psi{site=""}') > 1
    time.sleep(1.2)
    quiet = monitor.exposition().decode()
    assert sample(quiet, 'brainomaly_drift_window{site=""}') == 0
    assert np.isnan(sample(quiet, 'brainomaly_drift_psi{site=""}')) and np.isnan(sample(quiet, 'brainomaly_drift_ks{site=""}'))
    monitor.record_scores("3", rng.normal(size=50).tolist())  # traffic again: a fresh window
    assert sample(monitor.exposition().decode(), 'brainomaly_drift_window{site=""}') == 50
