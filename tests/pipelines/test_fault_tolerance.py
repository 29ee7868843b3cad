"""A training run survives a killed Ray Train worker: the run restarts its worker group and
resumes from the latest checkpoint (train.max_failures), finishing every epoch without training
again the epochs that were checkpointed before the kill."""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import ray
from ray.util.state import list_actors

from pipelines import tracking, train
from pipelines.params import load_params
from tests.conftest import write_params

pytestmark = pytest.mark.slow


def kill_a_worker_after_first_checkpoint(storage, killed: list, timeout: float = 600) -> None:
    """Kills one training worker once Ray Train has registered a checkpoint; ``killed`` gets its
    pid. Registered, not only written: a checkpoint folder exists before Ray Train's controller
    takes the report, and on a loaded machine a kill in between leaves nothing to resume from."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        if ray.is_initialized() and checkpoint_registered(storage):
            # this session's own GCS: with no address the state API may follow a stale `ray start` record
            workers = list_actors(address=ray.get_runtime_context().gcs_address,
                                  filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if workers:
                os.kill(workers[-1]["pid"], signal.SIGKILL)
                killed.append(workers[-1]["pid"])
        time.sleep(0.1)


def checkpoint_registered(storage) -> bool:
    """Whether Ray Train's own record of the run (its checkpoint manager's snapshot) names a checkpoint."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):  # being rewritten
            pass
    return False


def test_training_resumes_after_a_worker_is_killed(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    params = load_params(write_params(tmp_path, train={"epochs": 8, "num_workers": 2, "max_failures": 2}))
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint,
                              args=(tmp_path / "artifacts" / "ray_results", killed), daemon=True)
    killer.start()
    summary = train.run(params)
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test proved nothing"
    assert summary["epochs_trained"] == 8
    # A resume restarts at the epoch after the latest checkpoint; a restart from scratch would
    # report resumed_from_epoch 0 after the kill and log epoch 0 twice.
    client = tracking.client(params)
    resumed_from = [int(m.value) for m in client.get_metric_history(summary["mlflow_run_id"], "resumed_from_epoch")]
    assert resumed_from[0] == 0 and resumed_from[-1] >= 1, f"the run restarted instead of resuming: {resumed_from}"
    epochs = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train_loss")]
    assert epochs.count(0) == 1 and sorted(set(epochs)) == list(range(8))
    assert all(epochs.count(e) == 1 for e in range(resumed_from[-1])), f"checkpointed epochs trained again: {epochs}"
