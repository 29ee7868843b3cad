"""The monitor's drift windows as a scrape sees them: filled by scans, emptied once traffic stops."""

import time

import numpy as np

from components.monitoring.drift import DriftSettings
from serving.monitor import Monitor

DESCRIPTION = {"name": "brainomaly-detector", "version": "3", "detector": "denoising_ae", "slice_threshold": 2.0}


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f'brainomaly_drift_{name}{{site=""}}'))
    return float(line.split()[-1])


def test_a_window_that_saw_no_scan_for_stale_after_s_stops_reporting():
    monitor = Monitor.func_or_class(DriftSettings(window=100, min_scores=20, stale_after_s=1.0))
    rng = np.random.default_rng(0)
    monitor.model_loaded(DESCRIPTION, rng.normal(size=200).tolist())
    monitor.record_scores("3", (rng.normal(size=50) + 3).tolist())  # a shifted scan: the gauges light up
    lit = monitor.exposition().decode()
    assert gauge(lit, "window") == 50 and gauge(lit, "psi") > 1
    time.sleep(1.2)
    quiet = monitor.exposition().decode()
    assert gauge(quiet, "window") == 0 and np.isnan(gauge(quiet, "psi")) and np.isnan(gauge(quiet, "ks"))
    monitor.record_scores("3", rng.normal(size=50).tolist())  # traffic again: a fresh window
    assert gauge(monitor.exposition().decode(), "window") == 50
