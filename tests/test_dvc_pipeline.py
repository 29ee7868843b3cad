"""`dvc repro` end to end on tiny params, in a temporary copy of the repository."""

import json
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import venv_env

pytestmark = pytest.mark.slow


def test_repro_runs_every_stage_to_a_registered_champion(pipeline_repo):
    log = (pipeline_repo / "repro.log").read_text()
    for stage in ("phantoms", "preprocess", "validate", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in log

    metrics = json.loads((pipeline_repo / "metrics" / "evaluate.json").read_text())
    assert {"slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "dice_mean"} <= set(metrics)
    assert (pipeline_repo / "plots" / "roc_slice.csv").read_text().startswith("fpr,tpr")
    assert json.loads((pipeline_repo / "reports" / "validation.json").read_text())["success"]

    registration = json.loads((pipeline_repo / "reports" / "registration.json").read_text())
    assert registration["promoted"] and registration["champion"] == "1"
    uri = f"sqlite:///{pipeline_repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("brainomaly-detector", "champion")
    run = client.get_run(champion.run_id)
    assert run.data.params["model.name"] == "spatial_vae"
    assert "test_slice_auroc" in run.data.metrics and "train_loss" in run.data.metrics
    assert champion.tags["processed_data_md5"] != "unknown" and len(champion.tags["git_commit"]) == 40


def test_second_repro_runs_nothing(pipeline_repo):
    again = subprocess.run(["dvc", "repro"], cwd=pipeline_repo, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    status = subprocess.run(["dvc", "status"], cwd=pipeline_repo, env=venv_env(), capture_output=True, text=True)
    assert "up to date" in status.stdout


def test_metrics_show_lists_the_metrics(pipeline_repo):
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=pipeline_repo, env=venv_env(), capture_output=True, text=True)
    assert shown.returncode == 0 and "slice_auroc" in shown.stdout


def test_push_to_the_default_remote(pipeline_repo):
    pushed = subprocess.run(["dvc", "push"], cwd=pipeline_repo, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert any((pipeline_repo / "dvc-storage").rglob("*"))
