"""`brainomaly tune` on a real local Ray cluster: Ray Train inside Tune, ASHA and Optuna, every
trial a child MLflow run, the best one evaluated and registered; a rerun restores the sweep."""

import json
import re
import shutil

import pytest

from pipelines import tracking, tune
from pipelines.params import load_params
from tests.conftest import write_params

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
