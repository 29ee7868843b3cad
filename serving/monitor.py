"""One monitor for the whole application: request metrics, the served model, and score drift.

Ingress and model replicas send it what they saw; it keeps the single Prometheus registry, the
single drift window and what the newest loaded model is, so all three are right however many
replicas serve requests.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from prometheus_client import generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from components.monitoring.drift import DriftMonitor, DriftSettings
from serving.metrics import EndpointMetrics

log = logging.getLogger("brainomaly.serving")


async def tell(method: DeploymentHandle, *args) -> None:
    """Call one of the monitor's methods (``tell(monitor.record_pass, 1)``); monitoring is best
    effort, a hiccup never fails a request."""
    try:
        await method.remote(*args)
    except Exception as err:
        log.warning("the monitor did not take a report (%s): %s", type(err).__name__, err)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class Monitor:
    def __init__(self, drift: DriftSettings) -> None:
        self.settings = drift
        self.metrics = EndpointMetrics()
        self.served: tuple[str, str, str] | None = None  # (name, version, detector)
        self.description: dict | None = None
        self.load_error: str | None = None
        self.drift: dict[str, DriftMonitor] = {}  # by site; "" is the training calibration
        self.calibrated: dict[str, str | None] = {}  # by site: the calibration run watched

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)

    def record_pass(self, volumes: int) -> None:
        self.metrics.volumes_per_pass.observe(volumes)

    def record_scores(self, version: str, scores: list[float], site: str | None = None,
                      stages: dict[str, float] | None = None) -> None:
        """Slice scores of one prediction by ``version`` at ``site``, and the seconds it spent in
        each stage (upload, parse, transfer, preprocess, score, answer); a late report from a
        replica still on the previous version counts in the histograms but not in the new model's drift."""
        for stage, seconds in (stages or {}).items():
            self.metrics.stage_latency.labels(stage).observe(seconds)
        self.metrics.slices.observe(len(scores))
        for score in scores:
            self.metrics.scores.observe(score)
        key = site or ""
        if key in self.drift and self.served and version == self.served[1]:
            self.metrics.drift_events.labels(key).inc(self.drift[key].update(scores))
            self.metrics.show_drift(key, self.drift[key].report(), len(self.drift[key].scores))

    def model_loaded(self, description: dict, reference: list[float], site_references: dict | None = None) -> None:
        """A model replica now serves this version: a new version starts fresh drift windows; a
        site calibrated since gets its own window (the others keep theirs)."""
        self.metrics.load_failed.set(0)
        self.load_error = None
        served = (description["name"], description["version"], description["detector"])
        if self.served != served:
            if self.served:
                self.metrics.model_info.remove(*self.served)
            self.metrics.forget_sites()
            self.served, self.drift, self.calibrated = served, {}, {}
            self.metrics.model_info.labels(*served).set(1)
            log.info("monitoring %s version %s against %d reference scores", *served[:2], len(reference))
        self.description = description
        thresholds = {"": (description["slice_threshold"], reference, None)} | {
            site: (found["slice_threshold"], (site_references or {}).get(site, []), found.get("calibration_run"))
            for site, found in description.get("sites", {}).items()}
        for site, (threshold, scores, stamp) in thresholds.items():
            if site in self.drift and self.calibrated.get(site) == stamp:
                continue  # already watched, with this calibration
            try:
                self.drift[site] = DriftMonitor(scores, threshold, **asdict(self.settings))
            except ValueError as err:  # e.g. a site calibrated on too few slices: served, not watched
                log.warning("no drift watch for site %r: %s", site, err)
                continue
            self.calibrated[site] = stamp
            self.metrics.threshold.labels(site).set(threshold)
            self.metrics.drift_events.labels(site)
            self.metrics.show_drift(site, None, 0)

    def model_load_failed(self, version: str, message: str) -> None:
        self.metrics.load_failures.labels(version).inc()
        self.metrics.load_failed.set(1)
        self.load_error = message

    def served_model(self) -> dict:
        """What /readyz and /v1/model tell: the newest loaded model (None before) and the last
        load error since."""
        return {"model": self.description, "last_load_error": self.load_error}

    def exposition(self) -> bytes:
        for site, monitor in self.drift.items():  # traffic that stopped: its window goes, its alerts resolve
            if monitor.expire():
                self.metrics.show_drift(site, None, 0)
        return generate_latest(self.metrics.registry)
