"""A training run survives a killed Ray Train worker: the run restarts its worker group and
resumes from the latest checkpoint (train.max_failures), finishing every epoch."""

import os
import shutil
import signal
import threading
import time

import pytest
import ray
from ray.util.state import list_actors

from pipelines import train
from pipelines.params import load_params
from tests.conftest import write_params

pytestmark = pytest.mark.slow


def kill_a_worker_after_first_checkpoint(storage, killed: list, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        if ray.is_initialized() and any(storage.glob("*/checkpoint_*")):
            # this session's own GCS: with no address the state API may follow a stale `ray start` record
            workers = list_actors(address=ray.get_runtime_context().gcs_address,
                                  filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if workers:
                os.kill(workers[-1]["pid"], signal.SIGKILL)
                killed.append(workers[-1]["pid"])
        time.sleep(0.5)


def test_training_resumes_after_a_worker_is_killed(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    params = load_params(write_params(tmp_path, train={"epochs": 4, "num_workers": 2, "max_failures": 2}))
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint,
                              args=(tmp_path / "artifacts" / "ray_results", killed), daemon=True)
    killer.start()
    summary = train.run(params)
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test proved nothing"
    assert summary["epochs_trained"] == 4
