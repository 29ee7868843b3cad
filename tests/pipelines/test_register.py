"""The promotion gate against a real MLflow registry: the alias moves only to a better model."""

import json
import shutil

import mlflow
import pytest
import torch

from components.models.registry import build_detector
from pipelines import register, tracking
from pipelines.params import load_params
from tests.conftest import write_params


@pytest.fixture()
def project(processed_project, tmp_path):
    """A project with a (randomly initialised) trained-model folder, calibration and metrics."""
    shutil.copytree(processed_project / "data", tmp_path / "data")
    params = load_params(write_params(tmp_path))
    run_id = tracking.run_for(tracking.client(params), tracking.experiment_id(params), "ray_run_name", "test-run", "test-run")
    hyperparams = params.model.hyperparams()
    (tmp_path / "models" / "detector").mkdir(parents=True)
    torch.save(build_detector("spatial_vae", **hyperparams).state_dict(), tmp_path / "models" / "detector" / "weights.pt")
    (tmp_path / "models" / "detector" / "detector.json").write_text(
        json.dumps({"model_name": "spatial_vae", "hyperparams": hyperparams, "mlflow_run_id": run_id,
                    "ray_run_name": "test-run"})
    )
    (tmp_path / "models" / "calibration.json").write_text(json.dumps({
        "percentile": 98.0, "slice_threshold": 0.1, "volume_threshold": 0.2, "pixel_threshold": 0.3,
        "reference_scores": [0.05, 0.07, 0.09],
    }))
    return params


def register_with(params, auroc: float) -> dict:
    (params.root / "metrics").mkdir(exist_ok=True)
    (params.root / "metrics" / "evaluate.json").write_text(json.dumps({"slice_auroc": auroc}))
    return register.run(params)


def test_alias_moves_only_when_the_new_model_wins(project):
    first = register_with(project, 0.80)
    assert first["promoted"] and first["champion"] == "1"
    worse = register_with(project, 0.70)
    assert not worse["promoted"] and worse["version"] == "2" and worse["champion"] == "1"
    tie = register_with(project, 0.80)
    assert not tie["promoted"] and tie["champion"] == "1"
    better = register_with(project, 0.8816824966078698)
    assert better["promoted"] and better["champion"] == "4"
    same_again = register_with(project, 0.8816824966078698)
    assert not same_again["promoted"] and same_again["champion"] == "4"

    client = tracking.client(project)
    champion = client.get_model_version_by_alias("brainomaly-detector", "champion")
    assert str(champion.version) == "4"
    assert champion.tags["primary_metric"] == "slice_auroc"
    assert float(champion.tags["primary_metric_value"]) == 0.8816824966078698
    assert {"git_commit", "processed_data_md5"} <= set(champion.tags)


def test_registered_model_is_self_describing_and_loads_as_pyfunc(project):
    register_with(project, 0.8)
    mlflow.set_registry_uri(tracking.tracking_uri(project))
    model = mlflow.pyfunc.load_model("models:/brainomaly-detector@champion")
    scores = model.predict(torch.rand(3, 1, 32, 32).numpy())
    assert scores.shape == (3,)
    bundle = model.unwrap_python_model().bundle
    assert bundle.preprocess.size == 32 and bundle.calibration.reference_scores == [0.05, 0.07, 0.09]


def test_serving_fetches_the_champion_from_this_store_alone(project, tmp_path, monkeypatch):
    """As in a Serve replica: no MLflow globals set, a working directory elsewhere."""
    from serving.model_source import ModelNotFoundError, fetch_bundle, resolve_version

    register_with(project, 0.8)
    uri = tracking.tracking_uri(project)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    folder, name, version = fetch_bundle("models:/brainomaly-detector@champion", uri, tmp_path / "download")
    assert (folder / "bundle.json").is_file() and (name, version) == ("brainomaly-detector", "1")
    with pytest.raises(ModelNotFoundError, match="no model version has alias 'staging'"):
        resolve_version("models:/brainomaly-detector@staging", uri)
    with pytest.raises(ModelNotFoundError, match="is not models:/"):
        resolve_version("runs:/abc/model", uri)


def test_a_model_pulled_into_another_store_gets_a_run_there(project):
    """As after `dvc pull` on a machine with its own MLflow store: the recorded run id is unknown."""
    description = json.loads((project.root / "models" / "detector" / "detector.json").read_text())
    description |= {"mlflow_run_id": "0" * 32, "ray_run_name": "trained-elsewhere"}
    (project.root / "models" / "detector" / "detector.json").write_text(json.dumps(description))
    report = register_with(project, 0.8)
    run = tracking.client(project).get_run(
        tracking.client(project).get_model_version("brainomaly-detector", report["version"]).run_id
    )
    assert run.data.tags["ray_run_name"] == "trained-elsewhere"
