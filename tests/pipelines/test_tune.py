"""`brainomaly tune` on a real local Ray cluster: Ray Train inside Tune, ASHA and Optuna, every
trial a child MLflow run, the best one evaluated and registered; a rerun restores the sweep, and
a sweep interrupted with Ctrl+C resumes without training its finished trials again."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import tracking, tune
from pipelines.params import load_params
from tests.conftest import venv_env, write_params

pytestmark = pytest.mark.slow

SPACE = {"spatial_vae": {"kl_weight": {"loguniform": [0.001, 0.1]}, "latent_channels": {"choice": [8, 16]}}}


def test_sweep_tracks_trials_registers_the_best_and_resumes(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    settings = {"num_samples": 2, "epochs": 2, "grace_period": 1, "max_concurrent_trials": 2, "space": SPACE}
    params = load_params(write_params(tmp_path, tune=settings))
    summary = tune.run(params)

    report = json.loads((tmp_path / "reports" / "tune.json").read_text())
    assert len(report["trials"]) == 2
    assert all(0.0 <= t["val_slice_auroc"] <= 1.0 for t in report["trials"])
    assert summary["registration"]["version"] == "1" and summary["registration"]["promoted"]  # the first model wins
    assert re.fullmatch(r"dvc exp run -S model\.spatial_vae\.kl_weight=[0-9.e-]+ -S model\.spatial_vae\.latent_channels=(8|16)",
                        summary["adopt"])

    client = tracking.client(params)
    experiment = tracking.experiment_id(params)
    [parent] = client.search_runs([experiment], filter_string=f"tags.tune_sweep = '{summary['sweep']}'")
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        assert {"model.kl_weight", "model.latent_channels"} <= set(child.data.params)
        assert client.get_metric_history(child.info.run_id, "val_slice_auroc")
    assert any("test_slice_auroc" in child.data.metrics for child in
               client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"))

    # The same sweep again: restored from its folder, no trial runs twice.
    again = tune.run(params)
    assert again["sweep"] == summary["sweep"] and again["trials"] == 2
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    assert all(len(client.get_metric_history(c.info.run_id, "train_loss")) <= 2 for c in children)


def sweep_children(params) -> list:
    """The trial runs of this project's sweeps, oldest first."""
    return tracking.client(params).search_runs([tracking.experiment_id(params)],
                                               filter_string="tags.ray_run_name LIKE 'sweep-%'",
                                               order_by=["attributes.start_time ASC"])


def test_an_interrupted_sweep_resumes_without_retraining_finished_trials(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    settings = {"num_samples": 2, "epochs": 3, "max_concurrent_trials": 1, "scheduler": "none", "space": SPACE}
    params = load_params(write_params(tmp_path, tune=settings))
    client = tracking.client(params)
    command = [str(Path(sys.executable).parent / "brainomaly"), "tune"]
    with open(tmp_path / "tune.log", "w") as log:
        sweep = subprocess.Popen(command, cwd=tmp_path, env=venv_env(), stdout=log, stderr=subprocess.STDOUT)
        try:  # Ctrl+C once the second trial has trained an epoch (the first has finished; trials run one at a time)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and sweep.poll() is None:
                children = sweep_children(params)
                if len(children) >= 2 and client.get_metric_history(children[1].info.run_id, "train_loss"):
                    break
                time.sleep(2)
            assert sweep.poll() is None, f"the sweep ended before it could be interrupted:\n{(tmp_path / 'tune.log').read_text()[-3000:]}"
            sweep.send_signal(signal.SIGINT)
            code = sweep.wait(timeout=300)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    output = (tmp_path / "tune.log").read_text()
    assert code == 1 and "was interrupted: run `brainomaly tune` again to resume it" in output, output[-3000:]
    assert not (tmp_path / "reports" / "tune.json").exists()  # no partial result reported or registered
    finished = [run for run in sweep_children(params) if run.info.status == "FINISHED"]
    assert finished

    summary = tune.run(params)  # the same sweep, restored
    assert summary["trials"] == 2 and summary["registration"]["version"] == "1"
    children = sweep_children(params)
    assert len(children) == 2
    for run in finished:  # trained once, not again
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
