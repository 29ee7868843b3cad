"""The promotion gate against a real MLflow registry: the alias moves only to a model that beats
the champion by more than noise, on the same evaluation data."""

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from components.models.registry import build_detector
from pipelines import register, tracking
from pipelines.params import load_params
from tests.conftest import write_params

# 12 tumour and 12 healthy test subjects of 10 slices; the tumour subjects' slices 4-7 are abnormal.
SUBJECTS = [f"brats/T{i}" for i in range(12)] + [f"hcp/H{i}" for i in range(12)]
TEST_SLICES = pd.DataFrame([(s, k, s.startswith("brats") and 4 <= k < 8) for s in SUBJECTS for k in range(10)],
                           columns=["subject", "slice", "abnormal"])


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


def scores_with_separation(separation: float, seed: int) -> np.ndarray:
    """Test slice scores: abnormal slices ``separation`` standard deviations above the rest."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=len(TEST_SLICES)) + separation * TEST_SLICES["abnormal"].to_numpy()


def register_with(params, scores: np.ndarray, data: str = "data-v1", **metrics) -> dict:
    """`evaluate`'s outputs for these test scores (slice AUROC computed from them), then `register`."""
    for folder in ("metrics", "reports", "models"):
        (params.root / folder).mkdir(exist_ok=True)
    values = {"slice_auroc": roc_auc_score(TEST_SLICES["abnormal"], scores), **metrics}
    (params.root / "reports" / "evaluation.json").write_text(json.dumps(values))
    (params.root / "models" / "evaluation.json").write_text(json.dumps({"data_fingerprint": data, "evaluation_fingerprint": data}))
    TEST_SLICES.assign(score=scores).to_parquet(params.root / "models" / "test_scores.parquet")
    return register.run(params)


def test_the_first_model_becomes_champion_and_its_tags_say_why(project):
    first = register_with(project, scores_with_separation(1.0, seed=0))
    assert first["promoted"] and first["champion"] == "1" and first["reason"] == "no champion yet"
    tags = tracking.client(project).get_model_version("brainomaly-detector", "1").tags
    assert tags["compared_with"] == "none" and tags["promoted"] == "true" and tags["evaluation_data"] == "data-v1"
    assert {"git_commit", "processed_data_md5", "decision"} <= set(tags)
    # the registry page explains itself: what the model is, how the alias moves, what this version is
    client = tracking.client(project)
    assert "`champion` alias" in client.get_registered_model("brainomaly-detector").description
    described = client.get_model_version("brainomaly-detector", "1").description
    assert "Detector `spatial_vae`; preset `standard`" in described and tags["processed_data_md5"] in described
    assert f"- slice_auroc {first['value']:.3f}" in described
    assert "Promotion gate (the first version): promoted; no champion yet." in described


def test_a_win_within_noise_does_not_move_the_alias(project):
    # Two draws of the same model quality, the second scoring a little higher: a win by noise alone.
    draws = sorted((scores_with_separation(1.0, seed=s) for s in range(21)),
                   key=lambda scores: roc_auc_score(TEST_SLICES["abnormal"], scores))
    champion, lucky = draws[10], draws[12]
    register_with(project, champion)
    report = register_with(project, lucky)
    assert report["value"] > report["previous_value"], "the candidate must be higher, or the test proves nothing"
    assert not report["promoted"] and report["champion"] == "1"
    assert report["p_value"] > 0.05
    tags = tracking.client(project).get_model_version("brainomaly-detector", report["version"]).tags
    assert tags["compared_with"] == "1" and tags["promoted"] == "false" and "paired permutation test" in tags["decision"]
    described = tracking.client(project).get_model_version("brainomaly-detector", report["version"]).description
    assert "Promotion gate (compared with version 1): not promoted; paired permutation test" in described
    assert float(tags["p_value"]) == report["p_value"]


def test_a_clear_win_on_the_same_data_moves_the_alias(project):
    register_with(project, scores_with_separation(0.5, seed=0))
    report = register_with(project, scores_with_separation(3.0, seed=0))
    assert report["promoted"] and report["champion"] == "2" and report["p_value"] <= 0.05
    champion = tracking.client(project).get_model_version_by_alias("brainomaly-detector", "champion")
    assert str(champion.version) == "2" and champion.tags["compared_with"] == "1"
    assert float(champion.tags["primary_metric_value"]) == report["value"]


def test_a_candidate_evaluated_on_other_data_is_not_compared(project):
    register_with(project, scores_with_separation(0.5, seed=0), data="data-v1")
    report = register_with(project, scores_with_separation(3.0, seed=0), data="data-v2")
    assert not report["promoted"] and "other data" in report["reason"] and report["champion"] == "1"


def test_a_label_change_is_another_evaluation_on_the_same_data(processed_project):
    """evaluate.min_tumour_pixels rates other slices abnormal: the processed data are the same,
    the evaluation is not, so the gate never compares the two on their values."""
    from pipelines.evaluate import evaluation_identity

    root = processed_project / "data" / "processed"
    at_20, at_50 = evaluation_identity(root, 20), evaluation_identity(root, 50)
    assert at_20["data_fingerprint"] == at_50["data_fingerprint"] and at_20["labels"]["min_tumour_pixels"] == 20
    assert at_20["evaluation_fingerprint"] != at_50["evaluation_fingerprint"]
    assert evaluation_identity(root, 20) == at_20


def test_allow_data_change_compares_on_the_value_alone(processed_project, project):
    register_with(project, scores_with_separation(0.5, seed=0), data="data-v1")
    allowing = load_params(write_params(project.root, register={"allow_data_change": True}))
    report = register_with(allowing, scores_with_separation(3.0, seed=0), data="data-v2")
    assert report["promoted"] and "value alone" in report["reason"]


def test_a_new_primary_metric_takes_over_from_a_champion_judged_on_another(project):
    register_with(project, scores_with_separation(3.0, seed=0), dice_mean=0.50)
    by_dice = load_params(write_params(project.root, evaluate={"primary_metric": "dice_mean"}))
    report = register_with(by_dice, scores_with_separation(0.5, seed=0), dice_mean=0.10)
    assert report["promoted"] and "judged on slice_auroc" in report["reason"] and report["difference"] is None
    assert "Infinity" not in (project.root / "reports" / "registration.json").read_text()


def test_a_metric_without_slice_scores_needs_the_margin(project):
    by_dice = load_params(write_params(project.root, evaluate={"primary_metric": "dice_mean"}))
    margin = by_dice.registry.rule.margins["dice_mean"]
    register_with(by_dice, scores_with_separation(1.0, seed=0), dice_mean=0.50)
    assert not register_with(by_dice, scores_with_separation(1.0, seed=0), dice_mean=0.50 + margin / 2)["promoted"]
    assert register_with(by_dice, scores_with_separation(1.0, seed=0), dice_mean=0.50 + margin + 0.01)["promoted"]


def test_registered_model_is_self_describing_and_loads_as_pyfunc(project):
    register_with(project, scores_with_separation(1.0, seed=0))
    mlflow.set_registry_uri(tracking.tracking_uri(project))
    model = mlflow.pyfunc.load_model("models:/brainomaly-detector@champion")
    scores = model.predict({"images": torch.rand(3, 1, 32, 32).numpy(), "brain": np.ones((3, 1, 32, 32), bool)})
    assert scores.shape == (3,)
    with pytest.raises(ValueError, match="brain mask cannot be told from intensities"):
        model.predict(torch.rand(3, 1, 32, 32).numpy())
    bundle = model.unwrap_python_model().bundle
    assert bundle.preprocess.size == 32 and bundle.calibration.reference_scores == [0.05, 0.07, 0.09]
    assert bundle.evaluation == {"data_fingerprint": "data-v1", "evaluation_fingerprint": "data-v1"}


def test_serving_fetches_the_champion_from_this_store_alone(project, tmp_path, monkeypatch):
    """As in a Serve replica: no MLflow globals set, a working directory elsewhere."""
    from pipelines.model_store import ModelNotFoundError, fetch_bundle, resolve_version

    register_with(project, scores_with_separation(1.0, seed=0))
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
    report = register_with(project, scores_with_separation(1.0, seed=0))
    run = tracking.client(project).get_run(
        tracking.client(project).get_model_version("brainomaly-detector", report["version"]).run_id
    )
    assert run.data.tags["ray_run_name"] == "trained-elsewhere"


def test_a_version_whose_files_changed_since_registration_is_refused(project, tmp_path):
    from urllib.parse import urlparse

    from pipelines.model_store import DIGEST_TAGS, ModelIntegrityError, fetch_bundle

    register_with(project, scores_with_separation(1.0, seed=0))
    uri, client = tracking.tracking_uri(project), tracking.client(project)
    fetch_bundle("models:/brainomaly-detector/1", uri, tmp_path / "intact")
    stored = Path(urlparse(client.get_model_version_download_uri("brainomaly-detector", "1")).path)
    weights = stored / "artifacts" / "bundle" / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")  # one byte more than was registered
    with pytest.raises(ModelIntegrityError, match="the weights and bundle downloaded differ from the SHA-256"):
        fetch_bundle("models:/brainomaly-detector/1", uri, tmp_path / "tampered")
    unverifiable = client.create_model_version("brainomaly-detector", source=stored.as_uri())  # no digests recorded
    assert not set(DIGEST_TAGS) & set(unverifiable.tags)
    with pytest.raises(ModelIntegrityError, match="carries no weights_sha256 / bundle_sha256 tags"):
        fetch_bundle(f"models:/brainomaly-detector/{unverifiable.version}", uri, tmp_path / "untagged")


def test_every_listed_site_is_calibrated_for_a_new_version_and_a_lost_one_holds_the_promotion(project, phantom_roots):
    """sites.yaml names a site whose scans are there and one whose folder is gone: the version is
    calibrated for the first before any alias move, and the second is named, not dropped."""
    hcp_root, _ = phantom_roots
    (project.root / "sites.yaml").write_text(
        f"sites:\n  here: {{healthy: {hcp_root}}}\n  gone: {{healthy: {project.root / 'no-such-folder'}}}\n")
    held = register_with(project, scores_with_separation(1.0, seed=0))
    assert not held["promoted"] and held["champion"] is None
    assert "site gone could not be calibrated" in held["reason"] and "no-such-folder" in held["reason"]
    assert held["sites"]["gone"]["calibrated"] is False and held["sites"]["here"]["calibrated"] is True
    record = json.loads(tracking.client(project).get_model_version("brainomaly-detector", "1").tags["brainomaly.site.here"])
    assert record["scans"] == 4 and record["guaranteed_rates"]["volume"] == pytest.approx(1 / 5, abs=1e-6)
    (project.root / "sites.yaml").write_text(f"sites:\n  here: {{healthy: {hcp_root}}}\n")  # the lost site removed
    again = register_with(project, scores_with_separation(1.0, seed=0))
    assert again["promoted"] and again["sites"]["here"]["calibrated"]
