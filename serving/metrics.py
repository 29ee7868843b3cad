"""The endpoint's Prometheus metrics, in one registry owned by the monitor deployment.

Every ingress replica reports to the one monitor (serving/monitor.py), so ``GET /metrics``
shows the whole deployment however many replicas serve it, and the drift window sees every
scored slice once.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from components.monitoring.drift import DriftReport

# Scores are on each detector's own scale (residuals ~1e-2, latent distances ~1e1): log-spaced
# buckets from 1e-4 to 1e4 fit them all without knowing the model in advance.
SCORE_BUCKETS = tuple(float(b) for b in np.round(np.logspace(-4, 4, 33), 6))


class EndpointMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("brainomaly_requests", "HTTP requests by route and status code", ["route", "status"], registry=r)
        self.latency = Histogram(
            "brainomaly_request_latency_seconds", "Request latency by route", ["route"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0),
        )
        self.stage_latency = Histogram(
            "brainomaly_prediction_stage_seconds", "Where a prediction's time goes: upload, parse, transfer (the hops "
            "between the ingress and a model replica, queueing included), preprocess, score, answer", ["stage"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.slices = Histogram(
            "brainomaly_slices_per_request", "Slices scored per prediction", registry=r,
            buckets=(1, 10, 25, 50, 100, 155, 250, 500),
        )
        self.volumes_per_pass = Histogram(
            "brainomaly_volumes_per_pass", "Uploads a model replica scored in one pass of the network (serve.batch_volumes)",
            registry=r, buckets=(1, 2, 4, 8, 16, 32),
        )
        self.scores = Histogram("brainomaly_slice_score", "Anomaly scores of served slices", registry=r, buckets=SCORE_BUCKETS)
        self.model_info = Gauge(
            "brainomaly_model_info", "The model version being served (value 1)", ["name", "version", "detector"], registry=r
        )
        # Per site (`?site=`; site="" is the training calibration): its threshold and its drift.
        self.threshold = Gauge("brainomaly_slice_threshold", "The served model's slice decision threshold, per site",
                               ["site"], registry=r)
        self.load_failures = Counter(
            "brainomaly_model_load_failures", "Failed attempts to load a registry version", ["version"], registry=r
        )
        self.load_failed = Gauge(
            "brainomaly_model_load_failed", "1 while the newest registry version failed to load (an older one serves)", registry=r
        )
        self.drift_events = Counter("brainomaly_drift_events", "Score-drift events raised by the CUSUM detector, per site",
                                    ["site"], registry=r)
        self.drift = {
            field: Gauge(f"brainomaly_drift_{field}", help_text, ["site"], registry=r)
            for field, help_text in {
                "window": "Scores in the drift window",
                "psi": "Population stability index of the window's scores vs the reference",
                "ks": "Kolmogorov-Smirnov statistic of the window's scores vs the reference",
                "wasserstein": "1-Wasserstein distance of the window's scores from the reference (score units)",
                "fraction_above": "Fraction of the window's scores above the slice threshold",
                "expected_fraction_above": "Fraction of the reference scores above the slice threshold",
            }.items()
        }

    def show_drift(self, site: str, report: DriftReport | None, window: int) -> None:
        """A site's gauges of its latest report; the statistics read NaN until the window holds enough."""
        self.drift["window"].labels(site).set(window)
        for field, gauge in self.drift.items():
            if field != "window":
                gauge.labels(site).set(float("nan") if report is None else getattr(report, field))

    def forget_sites(self) -> None:
        """Drop every site's series (a new model version starts afresh)."""
        for metric in (self.threshold, self.drift_events, *self.drift.values()):
            metric.clear()
