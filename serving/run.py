"""Start Ray Serve with the detector endpoint and block until interrupted."""

from __future__ import annotations

import signal
import threading

from ray import serve

from pipelines.ray_cluster import ray_session
from serving.app import build_app
from pipelines.model_store import resolve_version
from serving.settings import EndpointSettings


def serve_forever(settings: EndpointSettings, *, host: str, port: int, deployment_options: dict,
                  route_prefix: str = "/") -> None:
    """Serve ``settings.model_uri`` at http://host:port<route_prefix> until SIGINT/SIGTERM. Uses
    ``RAY_ADDRESS`` if set."""
    name, version = resolve_version(settings.model_uri, settings.tracking_uri)  # fail here, clearly, before starting anything
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ray_session():
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build_app(settings, deployment_options), name="brainomaly", route_prefix=route_prefix)
            print(f"Serving {name} version {version} at http://{host}:{port}{route_prefix.rstrip('/')}/v1/predict "
                  "(Ctrl-C to stop)", flush=True)
            stop.wait()
        finally:
            serve.shutdown()
