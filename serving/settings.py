"""What an endpoint needs to know, handed from the command line to every replica."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.data.nifti_io import VolumeLimits
from components.monitoring.drift import DriftSettings


@dataclass(frozen=True)
class EndpointSettings:
    """Built from params.yaml's serve section by `brainomaly serve`, where each default is declared."""

    model_uri: str  # models:/<name>@<alias> follows the alias; models:/<name>/<version> pins one
    tracking_uri: str
    max_upload_bytes: int
    limits: VolumeLimits  # each upload's voxels, as sent and as resampled
    registry_poll_s: float
    upload_timeout_s: float  # to receive a whole upload (408 past it)
    predict_timeout_s: float  # to score a volume once a replica starts it (504 past it)
    batch_volumes: int  # uploads a model replica scores in one pass of the network (1: each alone)
    batch_wait_s: float  # how long a pass waits for more uploads to join it
    api_key: str | None = field(repr=False)  # required in X-API-Key when set
    metrics_require_key: bool  # /metrics behind the key too (Prometheus then sends it)
    drift: DriftSettings
    min_component_voxels: int  # a DICOM SEG's smallest lesion, as the pixel-wise evaluation drops smaller
    thin_slices: bool  # every k-th slice scored where slices lie closer than a model pixel is wide
