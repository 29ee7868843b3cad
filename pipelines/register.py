"""Stage `register`: log the self-describing model to MLflow, register it, and move the
``champion`` alias to it only when it beats the current champion by more than noise, on the
same evaluation data (components/metrics/promotion.py). Every version's tags record what it was
compared with and why it was or was not promoted.

Before the alias can move, the new version is calibrated for every site of sites.yaml
(pipelines/calibrate.py), so a site calibrated for the champion stays calibrated across a swap;
a site whose scans cannot be read holds the promotion and is named in the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException

import components
from components.atomic import write_json
from components.metrics.promotion import Decision, decide
from components.models.bundle import TEST_SCORES, DetectorBundle, bundle_digests
from components.models.calibration import Calibration
from components.preprocess.spec import PreprocessSpec
from pipelines import tracking
from pipelines.calibrate import calibrate_known_sites
from pipelines.evaluate import ALL_METRICS, CALIBRATION, EVALUATION
from pipelines.evaluate import TEST_SCORES as EVALUATED_SCORES
from pipelines.model_store import champion
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
    """The model folder from the train and evaluate stages' outputs, the gate's evidence included."""
    description = json.loads(params.path(MODEL_DIR / "detector.json").read_text())
    bundle = DetectorBundle(
        model_name=description["model_name"],
        hyperparams=description["hyperparams"],
        preprocess=PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json")),
        calibration=Calibration(**json.loads(params.path(CALIBRATION).read_text())),
        data_version=data_version(params),
        metrics=json.loads(params.path(ALL_METRICS).read_text()),
        evaluation=json.loads(params.path(EVALUATION).read_text()),
    )
    bundle.save(folder, torch.load(params.path(MODEL_DIR / "weights.pt"), map_location="cpu", weights_only=True))
    shutil.copyfile(params.path(EVALUATED_SCORES), folder / TEST_SCORES)
    return bundle, description


def pyfunc_model(bundle_folder: Path) -> dict:
    """The MLflow pyfunc arguments of a bundle: model from code, the components package beside it."""
    return {"python_model": str(PYFUNC_CODE), "artifacts": {"bundle": str(bundle_folder)},
            "code_paths": [str(Path(components.__file__).parent)],
            "pip_requirements": ["torch", "nibabel", "scipy", "numpy", "pandas", "scikit-learn", "mlflow"]}


def champion_scores(client, version) -> pd.DataFrame | None:
    """The champion's test slice scores (None for a version registered without them)."""
    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/artifacts/bundle/{TEST_SCORES}",
                                                       dst_path=tmp, tracking_uri=client.tracking_uri)
        except (MlflowException, OSError):
            return None
        return pd.read_parquet(path)


def gate(params: Params, client, bundle: DetectorBundle, scores: pd.DataFrame) -> tuple[Decision, object]:
    """The decision on the candidate, and the champion it was compared with."""
    primary = params.evaluate.primary_metric
    current = champion(client, params.registry.model_name, params.registry.alias)
    if current is None:
        return decide(primary, float(bundle.metrics[primary]), None, True, scores, None, params.registry.rule), None
    if current.tags.get("primary_metric") != primary or "primary_metric_value" not in current.tags:
        # evaluate.primary_metric was changed on purpose: the new metric's first model takes over
        return Decision(True, f"the champion has no {primary} to compare with (judged on "
                              f"{current.tags.get('primary_metric', 'nothing')})"), current
    same_data = current.tags.get("evaluation_data") == bundle.evaluation.get("evaluation_fingerprint")
    decision = decide(primary, float(bundle.metrics[primary]), float(current.tags["primary_metric_value"]), same_data,
                      scores, champion_scores(client, current) if same_data else None, params.registry.rule)
    return decision, current


def model_description(alias: str, primary: str) -> str:
    """What the registered model is, and how its alias moves: the registry page's own words."""
    return (f"Brainomaly's unsupervised brain-MRI anomaly detector, trained on healthy scans only. Each version is one "
            f"trained detector with its preprocessing recipe, thresholds and test scores (`brainomaly register`). "
            f"The `{alias}` alias, which the endpoint serves, moves to a new version only when the promotion gate "
            f"finds it better on {primary} than the current {alias}, on the same evaluation data and labels, by more "
            f"than noise (a paired permutation test over test subjects, and a margin of two standard deviations of "
            f"repeated training); each version's tags and description say why it did or did not move.")


def version_description(params: Params, bundle: DetectorBundle, decision: Decision, current) -> str:
    """A version's page: detector, recipe, data version, headline metrics with their 95 % intervals, the gate's decision."""
    spec, metrics = bundle.preprocess, bundle.metrics
    recipe = (f"preset `{params.preprocess.preset}`: {spec.size} px, {spec.normalisation}"
              f"{', histogram standardisation' if spec.histogram_landmarks else ''}"
              f"{', N4 bias correction' if spec.bias_correction else ''}, "
              f"{'native grid' if spec.spacing_mm is None else f'{spec.spacing_mm} mm'}")
    lines = [f"Detector `{bundle.model_name}`; {recipe}.",
             f"Data: code {bundle.data_version.get('git_commit', 'unknown')[:12]}, processed data "
             f"{bundle.data_version.get('processed_data_md5', 'unknown')}.",
             "Test split (95 % interval over subjects):"]
    for key in ("slice_auroc", "slice_auprc", "slice_false_alarm_rate", "slice_sensitivity", "pixel_auprc", "dice_mean"):
        if key in metrics:
            interval = metrics.get("ci95", {}).get(key)
            lines.append(f"- {key} {metrics[key]:.3f}" + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""))
    compared = f"compared with version {current.version}" if current else "the first version"
    lines.append(f"Promotion gate ({compared}): {'promoted' if decision.promote else 'not promoted'}; {decision.reason}.")
    return "\n".join(lines)


def run(params: Params) -> dict:
    tracking.experiment_id(params)  # points mlflow.start_run/log_model at the project's store
    client = tracking.client(params)
    name, alias, primary = params.registry.model_name, params.registry.alias, params.evaluate.primary_metric
    with tempfile.TemporaryDirectory() as tmp:
        bundle, description = build_bundle(params, Path(tmp) / "bundle")
        digests = bundle_digests(Path(tmp) / "bundle")  # the endpoint loads a version only if these still match
        scores = pd.read_parquet(Path(tmp) / "bundle" / TEST_SCORES)
        decision, current = gate(params, client, bundle, scores)
        with mlflow.start_run(run_id=tracking.training_run(params, description["ray_run_name"])):
            info = mlflow.pyfunc.log_model(name="detector", registered_model_name=name,
                                           **pyfunc_model(Path(tmp) / "bundle"))
        version = str(info.registered_model_version)
        _, detector = DetectorBundle.load(Path(tmp) / "bundle", params.evaluate.device)
        sites = calibrate_known_sites(params, client, name, version, bundle, detector)
    lost = sorted(site for site, found in sites.items() if not found["calibrated"])
    if decision.promote and lost:  # the alias would move to a version these sites cannot use
        decision = Decision(False, f"held: site{'s' if len(lost) > 1 else ''} {', '.join(lost)} could not be "
                                   f"calibrated for it ({sites[lost[0]]['error']}); restore the scans, or remove the "
                                   f"site from sites.yaml, and register again", decision.difference, decision.p_value)
    value = float(bundle.metrics[primary])
    tags = {"primary_metric": primary, "primary_metric_value": repr(value),  # full precision: ties must tie
            "evaluation_data": bundle.evaluation.get("evaluation_fingerprint", "unknown"),
            "evaluation_labels": json.dumps(bundle.evaluation.get("labels", {}), sort_keys=True), **bundle.data_version,
            "compared_with": str(current.version) if current else "none", "promoted": str(decision.promote).lower(),
            "decision": decision.reason, **digests}
    if decision.difference is not None:
        tags["difference"] = repr(decision.difference)
    if decision.p_value is not None:
        tags["p_value"] = repr(decision.p_value)
    for key, tag in tags.items():
        client.set_model_version_tag(name, version, key, tag)
    client.update_registered_model(name, description=model_description(alias, primary))
    client.update_model_version(name, version, description=version_description(params, bundle, decision, current))
    if decision.promote:
        client.set_registered_model_alias(name, alias, version)
    report = {
        "model_name": name, "version": version, "alias": alias, "promoted": decision.promote, "reason": decision.reason,
        "primary_metric": primary, "value": value,
        "previous_champion": str(current.version) if current else None,
        "previous_value": float(current.tags["primary_metric_value"]) if current and "primary_metric_value" in current.tags else None,
        "difference": decision.difference, "p_value": decision.p_value,
        "champion": version if decision.promote else (str(current.version) if current else None),
        "model_uri": f"models:/{name}@{alias}", "sites": sites,
    }
    write_json(params.path(REPORT), report)
    return report
