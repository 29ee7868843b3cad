"""A real two-node Ray cluster on this machine (`ray start --head` and a second `ray start
--address` node, one CPU each): a 2-worker training spreads over both nodes, and a 2-trial
sweep runs a trial on each."""

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray._private.authentication_test_utils import reset_auth_token_state
from ray.util.state import list_actors

from pipelines import train, tune
from pipelines.params import load_params
from serving.local_server import free_port
from tests.conftest import write_params

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def two_nodes(monkeypatch):
    # Ray's token authentication, as on a real cluster: every node and the driver share the token
    # (this process re-reads Ray's auth settings, cached from earlier tests, before and after).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    reset_auth_token_state()
    port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
                    "--resources={\"head_node\": 1}", *common], check=True, capture_output=True)
    try:
        subprocess.run([RAY, "start", f"--address={address}", "--resources={\"second_node\": 1}", *common],
                       check=True, capture_output=True)
        monkeypatch.setenv("RAY_ADDRESS", address)
        yield address, f"http://127.0.0.1:{dashboard}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
        monkeypatch.delenv("RAY_AUTH_MODE")
        monkeypatch.delenv("RAY_AUTH_TOKEN")
        reset_auth_token_state()


def worker_nodes(dashboard: str) -> set[str]:
    """The nodes on which Ray Train workers ran (the state API keeps finished actors)."""
    return {a["node_id"] for a in list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker")])}


def test_training_and_a_sweep_span_both_nodes(two_nodes, processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    space = {"spatial_vae": {"kl_weight": {"loguniform": [0.001, 0.1]}}}
    params = load_params(write_params(tmp_path, train={"epochs": 1, "num_workers": 2},
                                      tune={"num_samples": 2, "epochs": 1, "grace_period": 1, "max_concurrent_trials": 2,
                                            "space": space}))
    assert train.run(params)["epochs_trained"] == 1
    assert len(worker_nodes(two_nodes[1])) == 2, "one CPU per node: the two workers must be on different nodes"

    summary = tune.run(params)
    assert summary["trials"] == 2
    report = json.loads((tmp_path / "reports" / "tune.json").read_text())
    assert all(t["val_slice_auroc"] is not None for t in report["trials"])
