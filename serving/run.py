"""Start Ray Serve with the detector endpoint and block until interrupted."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from ray import serve

from pipelines.ray_cluster import ray_session
from serving.app import Ingress, build_app
from pipelines.model_store import resolve_version
from serving.settings import EndpointSettings


SHARED_MEMORY = Path("/dev/shm")
APP = "brainomaly"


@contextlib.contextmanager
def spill_folder(chosen: Path | None) -> Iterator[Path]:
    """Where Ray may put the scans its object store cannot hold: ``chosen``, or a fresh folder in
    shared memory (RAM), removed afterwards, so that no scan reaches a disk."""
    if chosen is not None:
        yield chosen
        return
    if not SHARED_MEMORY.is_dir():
        raise ValueError(f"no {SHARED_MEMORY} here: set serve.spill_directory to where Ray may spill scans")
    folder = Path(tempfile.mkdtemp(prefix="brainomaly-spill-", dir=SHARED_MEMORY))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serve_forever(settings: EndpointSettings, *, host: str, port: int, deployment_options: dict,
                  route_prefix: str = "/", spill_to: Path | None = None) -> None:
    """Serve ``settings.model_uri`` at http://host:port<route_prefix> until SIGINT/SIGTERM. Uses
    ``RAY_ADDRESS`` if set; otherwise a local Ray whose object store spills and overflows to
    ``spill_to`` (None: shared memory, never a disk).

    On the signal it stops taking requests, lets those in flight finish (each deployment's
    ``graceful_shutdown_timeout_s``: serve.drain_timeout_s), shuts Serve and a local Ray down
    and returns, so the process exits 0 with nothing of its own left running."""
    name, version = resolve_version(settings.model_uri, settings.tracking_uri)  # fail here, clearly, before starting anything
    stop = threading.Event()
    with spill_folder(spill_to) as spill, ray_session(spill):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose own handlers abort the process
            signal.signal(sig, lambda *_: stop.set())
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build_app(settings, deployment_options), name=APP, route_prefix=route_prefix)
            print(f"Serving {name} version {version} at http://{host}:{port}{route_prefix.rstrip('/')}/v1/predict "
                  "(Ctrl-C to stop)", flush=True)
            stop.wait()
            drain = deployment_options["graceful_shutdown_timeout_s"]
            print(f"Stopping: no new requests; those in flight finish (up to {drain:g} s)", flush=True)
            # The ingress first, while the model replicas still answer it; then everything.
            left = serve.get_deployment_handle(Ingress.name, APP).drain.remote(drain).result()
            if left:
                print(f"{left} request(s) still running after {drain:g} s: stopped", flush=True)
            serve.delete(APP)
        finally:
            serve.shutdown()
    print("Stopped.", flush=True)
