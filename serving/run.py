"""Start Ray Serve with the detector endpoint and block until interrupted."""

from __future__ import annotations

import logging
import signal
import threading

from ray import serve

from pipelines.ray_cluster import ray_session
from serving.app import build_app
from serving.model_source import resolve_version

log = logging.getLogger(__name__)


def serve_forever(
    *, host: str, port: int, model_uri: str, tracking_uri: str, max_upload_mb: float, num_replicas: int = 1
) -> None:
    """Serve ``model_uri`` at http://host:port until SIGINT/SIGTERM. Uses ``RAY_ADDRESS`` if set."""
    name, version = resolve_version(model_uri, tracking_uri)  # fail here, clearly, before starting anything
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ray_session():
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build_app(model_uri, tracking_uri, max_upload_mb, num_replicas),
                      name="brainomaly", route_prefix="/")
            print(f"Serving {name} version {version} at http://{host}:{port}/v1/predict (Ctrl-C to stop)", flush=True)
            stop.wait()
        finally:
            serve.shutdown()
