"""`brainomaly serve` as a child process on this machine, for benchmarks, drills and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(folder: Path, params: str = "params.yaml", env: dict | None = None, timeout: float = 300,
                   route_prefix: str = "", model_uri: str | None = None) -> Iterator[str]:
    """Start the endpoint on a free port with ``folder``'s params and registry, in ``env`` (this
    process's environment by default), serving ``model_uri`` (None: the params' own); yields its
    URL (with the params' ``route_prefix``) once /readyz answers 200 and stops the whole process
    group afterwards. The log is ``folder/serve-<port>.log``."""
    with server_process(folder, params, env, timeout, route_prefix, model_uri) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(folder: Path, params: str = "params.yaml", env: dict | None = None, timeout: float = 300,
                   route_prefix: str = "", model_uri: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """running_server's URL and the `brainomaly serve` process, whose session holds every
    process of the server (Ray's included): what a benchmark measures the memory of."""
    port = free_port()
    log_path = Path(folder) / f"serve-{port}.log"
    command = [str(Path(sys.executable).parent / "brainomaly"), "serve", "--params", params, "--port", str(port),
               *(["--model-uri", model_uri] if model_uri else [])]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=folder, env=os.environ if env is None else env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"
            _wait_until_ready(url, process, log_path, timeout)
            yield url, process
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(requests.RequestException):  # not listening yet, or the proxy up before the app
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
