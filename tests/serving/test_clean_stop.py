"""`brainomaly serve` stopped as systemd, Docker and Kubernetes stop a service: SIGTERM (or
SIGINT) with a prediction in flight. It finishes that prediction, exits 0, and leaves no
process of its own behind (Ray's agents included)."""

import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from components.data.layouts import read_brats
from serving.local_server import server_process
from tests.conftest import venv_env


def session_processes(session: int) -> list[str]:
    """The live processes of a session: (pid, command) from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name} {(stat.parent / 'cmdline').read_bytes()[:80]!r}")
    return found


def trickle(data: bytes, seconds: float, parts: int = 20):
    """An upload that takes ``seconds`` to arrive: the prediction is in flight when the signal lands."""
    step = len(data) // parts + 1
    for start in range(0, len(data), step):
        time.sleep(seconds / parts)
        yield data[start:start + step]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_prediction_in_flight_and_exits_0_leaving_nothing(pipeline_repo, stop):
    scan = read_brats(pipeline_repo / "data" / "raw" / "brats")[0].image.read_bytes()
    with server_process(pipeline_repo, env=venv_env()) as (url, process):
        answer = {}
        client = threading.Thread(target=lambda: answer.update(
            response=requests.post(f"{url}/v1/predict", data=trickle(scan, 2.0), timeout=120)))
        client.start()
        time.sleep(0.5)
        process.send_signal(stop)
        assert process.wait(timeout=120) == 0, (pipeline_repo / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()[-3000:]
        client.join(timeout=60)
        assert answer["response"].status_code == 200 and answer["response"].json()["slices_scored"] > 0
        time.sleep(2)  # what the server stopped has had time to exit
        assert session_processes(process.pid) == [], "processes of the stopped server are still running"
