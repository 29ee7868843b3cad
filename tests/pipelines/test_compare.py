"""`brainomaly compare` end to end on tiny data: real Ray Train runs, the real evaluate stage, a
real MLflow store; a failing detector is reported without losing the others' results."""

import json
import shutil

import pytest

from pipelines import compare, tracking
from pipelines.errors import StageError
from pipelines.params import load_params
from tests.conftest import write_params

pytestmark = pytest.mark.slow


def test_comparison_report_and_nested_runs(processed_project, phantom_roots, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    for cohort, root in zip(("healthy", "tumour"), phantom_roots):  # one more site: the same scans again
        shutil.copytree(root, tmp_path / "sites" / "elsewhere" / cohort)
    tiny = {"base_channels": 8, "downsamplings": 3}
    settings = {
        "detectors": ["intensity", "spatial_ae", "dual_vae"],
        "overrides": {
            "spatial_ae": {"model": {**tiny, "latent_channels": 8}, "train": {"epochs": 2},
                           "evaluate": {"pixel_median": 5}},  # its maps' own window, kept with its thresholds
            # more unlabelled slices per batch than a worker holds: this one must fail, alone
            "dual_vae": {"model": {**tiny, "latent_size": 16}, "train": {"epochs": 1, "batch_size": 4096}},
        },
    }
    data, calibrate = {"sites_root": str(tmp_path / "sites")}, {"healthy_scans": 1}  # the site has 4 healthy scans
    params = load_params(write_params(tmp_path, compare=settings, data=data, calibrate=calibrate))
    with pytest.raises(StageError, match=r"(?s)dual_vae.*a worker got fewer than one batch \(2048\) of unlabelled"):
        compare.run(params)

    results = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    assert set(results) == {"intensity", "spatial_ae"}
    assert results["intensity"]["epochs"] == 1  # nothing to learn: one pass
    for name, row in results.items():  # the cross-site report of each detector
        site = row["sites"]["elsewhere"]
        assert site["scans"] == {"calibration": 1, "healthy_test": 3, "tumour_test": 3, "skipped": []}
        assert 0 <= site["deployed"]["slice_false_alarm_rate"] <= 1 and "slice_auroc" in site["ci95"]
    assert "map_mean" in results["spatial_ae"]["alternative_scores"]  # the slice score the focal one replaced
    assert results["spatial_ae"]["epochs"] == 2 and results["spatial_ae"]["train_slices_per_s"] > 0
    windows = {name: json.loads((tmp_path / "artifacts" / "compare" / name / "models" / "calibration.json").read_text())
               ["pixel_median"] for name in results}
    assert windows == {"intensity": 3, "spatial_ae": 5}
    table = (tmp_path / "reports" / "comparison.md").read_text()
    assert "spatial_ae (map_mean)" in table
    assert "Dice" in table and "ROC-AUC" in table
    beaten = results["spatial_ae"]["sites"]["elsewhere"]["slice_auroc"] < results["intensity"]["sites"]["elsewhere"]["slice_auroc"]
    ranking = table.split("### ")[1]  # the first table: slice AUROC per site, ▽ below the baseline
    assert "| spatial_ae " in ranking and ("▽" in ranking.split("| spatial_ae ")[1].split("\n")[0]) == beaten

    client = tracking.client(params)
    parent = client.search_runs([tracking.experiment_id(params)], filter_string="tags.`brainomaly.comparison` = '1'")[0]
    for name in ("intensity", "spatial_ae"):
        child = client.get_run(results[name]["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["model.name"] == name

    # --only --rescore: one detector's model evaluated again under today's evaluate settings, not
    # retrained; the other row kept as it was, in the order of compare.detectors
    with pytest.raises(ValueError, match="--only nope: not in compare.detectors"):
        compare.run(params, only=["nope"])
    # as a comparison stopped after training spatial_ae leaves it, its row from a report written
    # with another MLflow store (a fresh clone's committed report): that run is not nested, not an error
    interrupted = {"intensity": {**results["intensity"], "mlflow_run_id": "f" * 32}}
    (tmp_path / "reports" / "comparison.json").write_text(json.dumps(interrupted))
    evaluate = {"score_reference": "none"}  # the thresholds in the detector's own units again
    rescored_params = load_params(write_params(tmp_path, compare=settings, data=data, calibrate=calibrate, evaluate=evaluate))
    compare.run(rescored_params, only=["spatial_ae"], rescore=True)
    rerun = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    assert list(rerun) == ["intensity", "spatial_ae"] and rerun["intensity"] == interrupted["intensity"]
    rescored = rerun["spatial_ae"]
    assert rescored["mlflow_run_id"] == results["spatial_ae"]["mlflow_run_id"]  # the same training run: no new one
    # with no row to keep, the training time is the training run's, which the stage's time contains
    assert 0 < rescored["train_seconds"] < results["spatial_ae"]["train_seconds"]
    assert rescored["slice_threshold"] != results["spatial_ae"]["slice_threshold"]  # scored under the new setting
    assert compare.trained_seconds(params, compare.workspace(params, "spatial_ae"), rescored) == rescored["train_seconds"]
    with pytest.raises(StageError, match="no model trained on today's data .* to rescore"):
        compare.run(rescored_params, only=["dual_vae"], rescore=True)  # its training failed: nothing to rescore
    assert list(compare.kept_results(params, ["spatial_ae"])) == ["intensity"]
    # a row evaluated on other processed data is dropped, not mixed into today's table
    stale = {**rerun, "intensity": {**rerun["intensity"], "data_fingerprint": "other data"}}
    (tmp_path / "reports" / "comparison.json").write_text(json.dumps(stale))
    assert list(compare.kept_results(params, ["spatial_ae"])) == []
