"""What an endpoint needs to know, handed from the command line to every replica."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.data.nifti_io import VolumeLimits
from components.monitoring.drift import DriftSettings


@dataclass(frozen=True)
class EndpointSettings:
    model_uri: str  # models:/<name>@<alias> follows the alias; models:/<name>/<version> pins one
    tracking_uri: str
    max_upload_bytes: int = 256 * 2**20
    limits: VolumeLimits = VolumeLimits()  # each upload's voxels, as sent and as resampled
    registry_poll_s: float = 30.0
    upload_timeout_s: float = 60.0  # to receive a whole upload (408 past it)
    predict_timeout_s: float = 120.0  # to score a volume once a replica starts it (504 past it)
    batch_volumes: int = 1  # uploads a model replica scores in one pass of the network (1: each alone)
    batch_wait_s: float = 0.005  # how long a pass waits for more uploads to join it
    api_key: str | None = field(default=None, repr=False)  # required in X-API-Key when set
    metrics_require_key: bool = False  # /metrics behind the key too (Prometheus then sends it)
    drift: DriftSettings = DriftSettings()
