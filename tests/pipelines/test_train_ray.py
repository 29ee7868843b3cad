"""Ray Train on a real local Ray cluster: 2 DDP workers on CPU, tracked in a real MLflow store."""

import json
import shutil

import numpy as np
import pytest

from components.data.slice_store import load_shard, read_index
from pipelines import train
from pipelines.params import load_params
from pipelines import tracking
from tests.conftest import write_params

pytestmark = pytest.mark.slow


@pytest.fixture()
def project(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    return tmp_path


def test_two_worker_training_checkpoints_tracks_and_resumes(project):
    params = load_params(write_params(project, train={"epochs": 3, "num_workers": 2}))
    summary = train.run(params)

    assert summary["epochs_trained"] == 3
    assert (project / "models" / "detector" / "weights.pt").is_file()
    checkpoints = [p for p in (project / "artifacts" / "ray_results" / summary["ray_run_name"]).glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == train.CHECKPOINTS_KEPT < 3  # the latest epochs' only

    client = tracking.client(params)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["train.num_workers"] == "2" and run.data.params["model.name"] == "spatial_vae"
    assert run.data.params["code.fingerprint"] == train.code_fingerprint()  # a code change trains afresh
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "val_l1")) == 3

    # Same params and data: the run is found, resumed from its last checkpoint, nothing retrained.
    again = train.run(params)
    assert again["mlflow_run_id"] == summary["mlflow_run_id"] and again["epochs_trained"] == 3
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    assert json.loads((project / "models" / "detector" / "detector.json").read_text())["ray_run_name"] == summary["ray_run_name"]

    # The same index and spec over rewritten shard values (new intensity code, say): a new run, trained afresh.
    shard = project / "data" / "processed" / read_index(project / "data" / "processed")["shard"].iloc[0]
    arrays = load_shard(shard.parents[2], str(shard.relative_to(shard.parents[2])))
    np.savez_compressed(shard, **(arrays | {"images": arrays["images"] * 0.9}))
    retrained = train.run(params)
    assert retrained["ray_run_name"] != summary["ray_run_name"] and retrained["mlflow_run_id"] != summary["mlflow_run_id"]
    assert [m.value for m in client.get_metric_history(retrained["mlflow_run_id"], "resumed_from_epoch")] == [0, 0, 0]


@pytest.mark.parametrize("name, hyperparams, parts, extra", [
    ("dense_vae", {"base_channels": 8, "latent_size": 32, "downsamplings": 3}, {"train_kl", "val_l1", "val_kl"}, {}),
    ("anovaegan", {"base_channels": 8, "latent_channels": 8, "downsamplings": 3},
     {"train_adversarial", "train_discriminator"}, {}),
    ("dual_vae", {"base_channels": 8, "latent_size": 16, "downsamplings": 3, "latent_samples": 1},
     {"train_mixed_loss", "val_l2"}, {"precision": "bf16", "channels_last": True}),
])
def test_other_detectors_train_through_the_same_stage(project, name, hyperparams, parts, extra):
    """model.name is the only change: a dense VAE (its image size comes from the data), a
    two-network adversarial detector, and the dual VAE, whose second VAE learns from the
    unlabelled tumour-cohort slices of a third dataset (in bf16 mixed precision, channels-last),
    all on 2 workers."""
    train_params = {"epochs": 1, "num_workers": 2, **extra}
    params = load_params(write_params(project, model={"name": name, name: hyperparams}, train=train_params))
    summary = train.run(params)
    assert summary["model_name"] == name and parts <= set(summary["final_metrics"])
    assert summary.get("hyperparams", {}).get("image_size", 32) == 32


def test_use_gpu_true_without_a_gpu_is_one_clear_error_and_the_run_is_marked_failed(project, monkeypatch):
    """On this GPU-less machine `true` must not leave Ray waiting for a GPU forever (`auto`, the
    default, trains on CPUs in every other test here)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    params = load_params(write_params(project, train={"epochs": 1, "use_gpu": True}))
    with pytest.raises(ValueError, match="train.use_gpu is true but this machine has no GPU"):
        train.run(params)
    client = tracking.client(params)
    runs = client.search_runs([tracking.experiment_id(params)])
    assert runs and all(run.info.status == "FAILED" for run in runs)
