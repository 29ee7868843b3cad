"""One monitor for the whole application: request metrics, the served model, and score drift.

Ingress and model replicas send it what they saw; it keeps the single Prometheus registry, the
single drift window and what the newest loaded model is, so all three are right however many
replicas serve requests.
"""

from __future__ import annotations

import logging

from prometheus_client import generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from components.monitoring.drift import DriftMonitor
from serving.metrics import EndpointMetrics
from components.monitoring.drift import DriftSettings

log = logging.getLogger("brainomaly.serving")


async def tell(monitor: DeploymentHandle, method: str, *args) -> None:
    """Call ``method`` on the monitor; monitoring is best effort, a hiccup never fails a request."""
    try:
        await getattr(monitor, method).remote(*args)
    except Exception as err:
        log.warning("monitor did not take %s: %s", method, err)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class Monitor:
    def __init__(self, drift: DriftSettings) -> None:
        self.settings = drift
        self.metrics = EndpointMetrics()
        self.served: tuple[str, str, str] | None = None  # (name, version, detector)
        self.description: dict | None = None
        self.load_error: str | None = None
        self.drift: DriftMonitor | None = None

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)

    def record_scores(self, version: str, scores: list[float]) -> None:
        """Slice scores of one prediction by ``version``; a late report from a replica still
        on the previous version counts in the histograms but not in the new model's drift."""
        self.metrics.slices.observe(len(scores))
        for score in scores:
            self.metrics.scores.observe(score)
        if self.drift is not None and self.served and version == self.served[1]:
            self.metrics.drift_events.inc(self.drift.update(scores))
            self.metrics.show_drift(self.drift.report(), len(self.drift.scores))

    def model_loaded(self, description: dict, reference: list[float]) -> None:
        """A model replica now serves this version: a new version starts a fresh drift window."""
        self.metrics.load_failed.set(0)
        self.load_error = None
        served = (description["name"], description["version"], description["detector"])
        if self.served == served:
            return
        if self.served:
            self.metrics.model_info.remove(*self.served)
        self.served, self.description = served, description
        self.metrics.model_info.labels(*served).set(1)
        threshold = description["slice_threshold"]
        self.metrics.threshold.set(threshold)
        self.drift = DriftMonitor(
            reference, threshold, window=self.settings.window, min_scores=self.settings.min_scores,
            cusum_k=self.settings.cusum_k, cusum_h=self.settings.cusum_h,
        )
        self.metrics.show_drift(None, 0)
        log.info("monitoring %s version %s against %d reference scores", *served[:2], len(reference))

    def model_load_failed(self, version: str, message: str) -> None:
        self.metrics.load_failures.labels(version).inc()
        self.metrics.load_failed.set(1)
        self.load_error = message

    def served_model(self) -> dict:
        """What /readyz and /v1/model tell: the newest loaded model (None before) and the last
        load error since."""
        return {"model": self.description, "last_load_error": self.load_error}

    def exposition(self) -> bytes:
        return generate_latest(self.metrics.registry)
