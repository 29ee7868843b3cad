"""Stage `register`: log the self-describing model to MLflow, register it, and move the
``champion`` alias to it only when its primary metric beats the current champion's."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import mlflow
import torch
import yaml
from mlflow.exceptions import MlflowException

import components
from components.models.bundle import Calibration, DetectorBundle
from components.preprocess.spec import PreprocessSpec
from pipelines import tracking
from pipelines.evaluate import CALIBRATION, METRICS
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.train import MODEL_DIR

REPORT = Path("reports/registration.json")
PYFUNC_CODE = Path(__file__).with_name("detector_pyfunc.py")


def data_version(params: Params) -> dict:
    """The git commit of the code and the DVC hash of the processed data the model came from."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=params.root, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    processed_md5 = "unknown"
    lock = params.path("dvc.lock")
    if lock.is_file():
        stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("preprocess", {})
        processed_md5 = next((o.get("md5") for o in stage.get("outs", []) if o.get("path") == str(PROCESSED_DIR)),
                             "unknown")
    return {"git_commit": commit, "processed_data_md5": processed_md5}


def build_bundle(params: Params, folder: Path) -> tuple[DetectorBundle, dict]:
    description = json.loads(params.path(MODEL_DIR / "detector.json").read_text())
    metrics = json.loads(params.path(METRICS).read_text())
    bundle = DetectorBundle(
        model_name=description["model_name"],
        hyperparams=description["hyperparams"],
        preprocess=PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json")),
        calibration=Calibration(**json.loads(params.path(CALIBRATION).read_text())),
        data_version=data_version(params),
        metrics=metrics,
    )
    bundle.save(folder, torch.load(params.path(MODEL_DIR / "weights.pt"), map_location="cpu"))
    return bundle, description


def champion_value(client, name: str, alias: str) -> tuple[str | None, float | None]:
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    return str(version.version), float(version.tags.get("primary_metric_value", "-inf"))


def run(params: Params) -> dict:
    tracking.experiment_id(params)  # points mlflow.start_run/log_model at the project's store
    client = tracking.client(params)
    name, alias, primary = params.registry.model_name, params.registry.alias, params.evaluate.primary_metric
    with tempfile.TemporaryDirectory() as tmp:
        bundle, description = build_bundle(params, Path(tmp) / "bundle")
        with mlflow.start_run(run_id=tracking.training_run(params, description["ray_run_name"])):
            info = mlflow.pyfunc.log_model(
                name="detector", python_model=str(PYFUNC_CODE), artifacts={"bundle": str(Path(tmp) / "bundle")},
                code_paths=[str(Path(components.__file__).parent)],
                pip_requirements=["torch", "nibabel", "scipy", "numpy", "scikit-learn", "mlflow"],
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    value = float(bundle.metrics[primary])
    client.set_model_version_tag(name, version, "primary_metric", primary)
    client.set_model_version_tag(name, version, "primary_metric_value", repr(value))  # full precision: ties must tie
    for key, tag in bundle.data_version.items():
        client.set_model_version_tag(name, version, key, tag)

    previous_version, previous_value = champion_value(client, name, alias)
    promoted = previous_value is None or value > previous_value
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    report = {
        "model_name": name, "version": version, "alias": alias, "promoted": promoted,
        "primary_metric": primary, "value": value,
        "previous_champion": previous_version, "previous_value": previous_value,
        "champion": version if promoted else previous_version, "model_uri": f"models:/{name}@{alias}",
    }
    params.path(REPORT).parent.mkdir(parents=True, exist_ok=True)
    params.path(REPORT).write_text(json.dumps(report, indent=2))
    return report
