"""A real Prometheus (Debian's `prometheus`) as a child process, scraping a local endpoint with the
project's alert rules: for the drift drill's test and the documentation's dashboard picture."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import requests
import yaml

from serving.local_server import free_port

RULES = Path(__file__).resolve().parents[1] / "infra" / "prometheus" / "alerts.yml"


@contextlib.contextmanager
def running_prometheus(target: str, folder: Path, rules: Path = RULES) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port) every second and evaluating ``rules`` every second,
    its database and log in ``folder``; yields its URL once it is ready, stops it afterwards."""
    if shutil.which("prometheus") is None:
        raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "brainomaly-endpoint", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(folder / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            # its own /-/ready, not whatever else took the port first
            wait_until(lambda: process.poll() is None and requests.get(f"{url}/-/ready", timeout=5).ok, 60, folder)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_until(condition: Callable[[], bool], seconds: float, folder: Path) -> None:
    """Poll ``condition`` (connection errors count as not yet) until it holds; on a slow machine Prometheus
    takes a while to open its database and to scrape for the first time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if condition():
                return
        time.sleep(1)
    raise RuntimeError(f"Prometheus not there after {seconds} s:\n" + (folder / "prometheus.log").read_text()[-3000:])


def scraped_up(prometheus: str) -> list:
    """The endpoint's `up` series, once Prometheus has scraped it."""
    return instant(prometheus, 'up{job="brainomaly-endpoint"}')


def instant(prometheus: str, query: str) -> list:
    """Each series of ``query`` now, as {"metric", "value"}."""
    return _result(requests.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10), query)


def query_range(prometheus: str, query: str, start: float, end: float, step: float) -> list:
    """Each series of ``query`` between ``start`` and ``end`` (unix seconds), as {"metric", "values"}."""
    return _result(requests.get(f"{prometheus}/api/v1/query_range",
                                params={"query": query, "start": start, "end": end, "step": step}, timeout=30), query)


def _result(response: requests.Response, query: str) -> list:
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {query!r}: {body.get('error')}")
    return body["data"]["result"]


def alert_states(prometheus: str, name: str) -> set[str]:
    """The states (pending, firing) of alert ``name``'s active instances."""
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["state"] for a in alerts if a["labels"]["alertname"] == name}


def wait_for_alert(prometheus: str, name: str, seconds: float) -> bool:
    """Whether alert ``name`` fires within ``seconds``."""
    deadline = time.monotonic() + seconds
    while "firing" not in alert_states(prometheus, name) and time.monotonic() < deadline:
        time.sleep(2)
    return "firing" in alert_states(prometheus, name)
