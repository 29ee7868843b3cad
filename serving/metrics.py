"""Prometheus metrics of the endpoint, in one registry served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

REQUESTS = Counter("brainomaly_requests", "HTTP requests by route and status code", ["route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "brainomaly_request_latency_seconds", "Request latency", ["route"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SLICE_SCORES = Histogram(
    "brainomaly_slice_score", "Anomaly scores of served slices", registry=REGISTRY,
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
)
MODEL_INFO = Gauge("brainomaly_model_info", "The model being served (value 1)", ["name", "version"], registry=REGISTRY)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
