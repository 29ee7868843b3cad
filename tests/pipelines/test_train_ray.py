"""Ray Train on a real local Ray cluster: 2 DDP workers on CPU, tracked in a real MLflow store;
Ctrl+C stops a training that a rerun resumes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ray.train import Result

from components.data.slice_store import load_shard, read_index
from pipelines import train
from pipelines.ray_cluster import VERBOSE_VARIABLE
from pipelines.params import load_params
from pipelines import tracking
from tests.conftest import venv_env, write_params

pytestmark = pytest.mark.slow
EPOCHS = 5  # room to interrupt between the first registered checkpoint and the end


@pytest.fixture()
def project(processed_project, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    return tmp_path


def interrupt_training(project) -> tuple[int, str]:
    """`brainomaly train` stopped with Ctrl+C, sent as a terminal sends it (to its whole process
    group) once a checkpoint is registered: its exit code and output."""
    command = [str(Path(sys.executable).parent / "brainomaly"), "train"]
    with open(project / "train.log", "w") as log:
        training = subprocess.Popen(command, cwd=project, env=venv_env(), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and training.poll() is None:
                if list((project / "artifacts" / "ray_results").glob("*/checkpoint_manager_snapshot.json")):
                    break  # Ray Train has registered a checkpoint
                time.sleep(0.2)
            assert training.poll() is None, f"training ended before it could be interrupted:\n{(project / 'train.log').read_text()[-3000:]}"
            os.killpg(training.pid, signal.SIGINT)
            code = training.wait(timeout=300)
        finally:
            if training.poll() is None:
                os.killpg(training.pid, signal.SIGKILL)
    return code, (project / "train.log").read_text()


def test_two_worker_training_checkpoints_tracks_and_resumes(project):
    params = load_params(write_params(project, train={"epochs": EPOCHS, "num_workers": 2}))
    client = tracking.client(params)

    # Ctrl+C: one line says how far it got; the rerun resumes there rather than starting over.
    code, output = interrupt_training(project)
    said = re.search(rf"brainomaly train: interrupted after (\d) of {EPOCHS} epochs; their checkpoint is kept: run it again to resume",
                     output)
    assert code == 1 and said and "Traceback" not in output, output[-3000:]
    done = int(said[1])
    # a quiet console: one line per epoch, read back from MLflow, and none of the workers' logs
    assert re.search(rf"epoch 1/{EPOCHS}: train_kl [0-9.e-]+, train_l1 .*val_loss", output), output[-3000:]
    assert "RayTrainWorker" not in output and "Ray's worker logs: /" in output, output[-3000:]
    summary = train.run(params)
    resumed = [m.value for m in client.get_metric_history(summary["mlflow_run_id"], "resumed_from_epoch")]
    logged = len(resumed) - (EPOCHS - done)  # epochs logged before the interrupt, some maybe past their checkpoint
    assert 1 <= done < EPOCHS and resumed == [0] * logged + [done] * (EPOCHS - done), resumed

    assert summary["epochs_trained"] == EPOCHS
    assert (project / "models" / "detector" / "weights.pt").is_file()
    kept = Result.from_path(str(project / "artifacts" / "ray_results" / summary["ray_run_name"])).best_checkpoints
    assert len(kept) == train.CHECKPOINTS_KEPT < EPOCHS  # the latest epochs' only

    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["train.num_workers"] == "2" and run.data.params["model.name"] == "spatial_vae"
    assert run.data.params["code.fingerprint"] == train.code_fingerprint()  # a code change trains afresh
    history = client.get_metric_history(run.info.run_id, "train_loss")  # epochs past the checkpoint twice
    assert sorted({m.step for m in history}) == list(range(EPOCHS)) and len(history) == len(resumed)
    assert len(client.get_metric_history(run.info.run_id, "val_l1")) == len(resumed)

    # Same params and data: the run is found, resumed from its last checkpoint, nothing retrained.
    again = train.run(params)
    assert again["mlflow_run_id"] == summary["mlflow_run_id"] and again["epochs_trained"] == EPOCHS
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(history)
    assert json.loads((project / "models" / "detector" / "detector.json").read_text())["ray_run_name"] == summary["ray_run_name"]

    # The same index and spec over rewritten shard values (new intensity code, say): a new run, trained afresh.
    shard = project / "data" / "processed" / read_index(project / "data" / "processed")["shard"].iloc[0]
    arrays = load_shard(shard.parents[2], str(shard.relative_to(shard.parents[2])))
    np.savez_compressed(shard, **(arrays | {"images": arrays["images"] * 0.9}))
    retrained = train.run(params)
    assert retrained["ray_run_name"] != summary["ray_run_name"] and retrained["mlflow_run_id"] != summary["mlflow_run_id"]
    assert [m.value for m in client.get_metric_history(retrained["mlflow_run_id"], "resumed_from_epoch")] == [0] * EPOCHS


@pytest.mark.parametrize("name, hyperparams, parts, extra", [
    ("dense_vae", {"base_channels": 8, "latent_size": 32, "downsamplings": 3}, {"train_kl", "val_l1", "val_kl"}, {}),
    ("anovaegan", {"base_channels": 8, "latent_channels": 8, "downsamplings": 3},
     {"train_adversarial", "train_discriminator"}, {}),
    ("dual_vae", {"base_channels": 8, "latent_size": 16, "downsamplings": 3, "latent_samples": 1},
     {"train_mixed_loss", "val_l2"}, {"precision": "bf16", "channels_last": True}),
    ("rectified_flow", {"base_channels": 8, "levels": 2}, {"train_loss", "val_loss"}, {}),
    ("conditioned_ddpm", {"base_channels": 8, "levels": 2, "sampling_steps": 2}, {"train_loss", "val_loss"}, {}),
])
def test_other_detectors_train_through_the_same_stage(project, name, hyperparams, parts, extra, monkeypatch, capfd):
    """model.name is the only change: a dense VAE (its image size comes from the data), a
    two-network adversarial detector, the dual VAE, whose second VAE learns from the
    unlabelled tumour-cohort slices of a third dataset (in bf16 mixed precision, channels-last),
    the rectified flow and the conditioned DDPM, all on 2 workers. The dense VAE trains verbosely: the workers' logs reach the console."""
    if name == "dense_vae":
        monkeypatch.setenv(VERBOSE_VARIABLE, "1")  # `brainomaly --verbose`
    train_params = {"epochs": 1, "num_workers": 2, **extra}
    params = load_params(write_params(project, model={"name": name, name: hyperparams}, train=train_params))
    summary = train.run(params)
    assert summary["model_name"] == name and parts <= set(summary["final_metrics"])
    assert summary.get("hyperparams", {}).get("image_size", 32) == 32
    captured = capfd.readouterr()
    assert ("RayTrainWorker" in captured.out + captured.err) == (name == "dense_vae")


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
