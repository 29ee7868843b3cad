"""`brainomaly compare`: train and evaluate several detectors on the same processed data and
write one comparison table, shaped like the papers' tables.

Each detector of ``compare.detectors`` runs the ordinary `train` and `evaluate` stages (Ray
Train, MLflow, the full protocol) in its own workspace (pipelines/workspace.py),
artifacts/compare/<name>/, whose params.yaml is this one with ``model.name`` set and
``compare.overrides.<name>`` merged in (the processed data are linked, not copied). Results: reports/comparison.json (DVC metrics: every
detector's metrics) and reports/comparison.md, and an MLflow run "comparison" holding both, with
every detector's training run nested under it. The reports are rewritten after each detector, so
an interrupted comparison keeps the rows it finished; each detector trains from scratch. ``only`` reruns some detectors and keeps
the other rows of the existing reports/comparison.json that were evaluated on the same processed data.

Each detector also runs the `sites` stage (its model on every site's held-out scans, at the
deployed thresholds and after site calibration): the cross-site tables (rows detectors, columns
sites, with 95 % intervals over subjects; ▽ marks a detector below the intensity baseline) come
first in reports/comparison.md, and every detector's site metrics sit under ``sites`` in its
row of reports/comparison.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlflow.exceptions import MlflowException

from components.atomic import write_text
from components.data.slice_store import processed_fingerprint
from components.reports.tables import markdown, site_markdown
from pipelines import tracking
from pipelines.errors import StageError
from pipelines.evaluate import ALL_METRICS, EVALUATION
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.sites import REPORT_JSON as SITES_JSON
from pipelines.train import MODEL_DIR
from pipelines.workspace import create, run_stage

WORKSPACES = Path("artifacts/compare")
REPORT_JSON = Path("reports/comparison.json")
REPORT_MD = Path("reports/comparison.md")


def detector_changes(params: Params, name: str) -> dict:
    """The params changes that make this project train detector ``name`` at its compared budget."""
    overrides = params.compare.overrides.get(name, {})
    return {"model": {"name": name, name: overrides.get("model", {})}, "train": overrides.get("train", {}),
            "evaluate": overrides.get("evaluate", {})}


def workspace(params: Params, name: str) -> Path:
    """artifacts/compare/<name>/: this project with model.name set and the overrides merged in."""
    return create(params, WORKSPACES / name, detector_changes(params, name))


def run(params: Params, only: list[str] | None = None, rescore: bool = False) -> dict:
    """Train and evaluate each detector (``only``: these, the others' rows kept); ``rescore``:
    evaluate the models an earlier comparison trained again, under today's evaluate settings."""
    if not params.path(PROCESSED_DIR / "index.parquet").is_file():
        raise FileNotFoundError("no processed data: run `brainomaly preprocess` (or `dvc repro validate`) first")
    unknown = sorted(set(only or ()) - set(params.compare.detectors))
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: not in compare.detectors {params.compare.detectors}")
    results, failures = kept_results(params, only), {}
    earlier = earlier_rows(params) if rescore else {}
    for name in only or params.compare.detectors:
        try:
            results[name] = train_and_evaluate(params, name, earlier.get(name, {}) if rescore else None)
        except StageError as err:  # one detector's failure must not cost the others' results
            failures[name] = str(err)
            continue
        results = {name: results[name] for name in params.compare.detectors if name in results}
        write_reports(params, results)  # after each detector: an interrupted comparison keeps what it finished
    if results:
        _log_to_mlflow(params, results)
    if failures:
        raise StageError("; ".join(f"{name}: {error}" for name, error in failures.items()))
    return {name: {k: round(m[k], 4) for k in ("slice_auroc", "cv_auroc_mean_t20", "dice_mean") if k in m}
            for name, m in results.items()}


def write_reports(params: Params, results: dict) -> None:
    across = {name: m["sites"] for name, m in results.items() if m.get("sites")}
    table = (site_markdown(across) + "\n" if across else "") + markdown(results, params.evaluate.tumour_pixel_sizes)
    for path, text in ((REPORT_JSON, json.dumps(results, indent=2)), (REPORT_MD, table)):
        write_text(params.path(path), text)


def kept_results(params: Params, only: list[str] | None) -> dict:
    """The existing report's rows of the detectors not rerun, in compare.detectors' order; a row
    evaluated on other processed data than today's is dropped, not mixed in."""
    report = params.path(REPORT_JSON)
    previous = json.loads(report.read_text()) if only and report.is_file() else {}
    current = processed_fingerprint(params.path(PROCESSED_DIR))
    return {name: previous[name] for name in params.compare.detectors
            if name in previous and name not in only and previous[name].get("data_fingerprint") == current}


def earlier_rows(params: Params) -> dict:
    """The report's rows, where it has any: what a rescore keeps of each detector's training."""
    report = params.path(REPORT_JSON)
    return json.loads(report.read_text()) if report.is_file() else {}


def train_and_evaluate(params: Params, name: str, trained: dict | None = None) -> dict:
    """One detector's evaluation metrics, training time and throughput, from its workspace.
    ``trained``: its row of an earlier comparison, whose model is evaluated again instead of
    training a new one (it must have been trained on today's processed data)."""
    folder = workspace(params, name)
    if trained is not None:
        train_seconds = trained_seconds(params, folder, trained)
        if train_seconds is None:
            raise StageError(f"{name}: no model trained on today's data in {folder} to rescore; "
                             f"run `brainomaly compare --only {name}` to train one")
    else:
        checkpoints = Path(params.train.storage_path)
        if "://" not in params.train.storage_path and not checkpoints.is_absolute():
            # from scratch, so that its training time is one; only the workspace's own folder, never a shared one
            shutil.rmtree(folder / checkpoints, ignore_errors=True)
        train_seconds = run_stage("train", folder, params)
    run_stage("evaluate", folder, params)
    across = {}
    if params.path(params.data.sites_root).is_dir():  # scans from other sites, where the project has them
        run_stage("sites", folder, params)
        across = json.loads((folder / SITES_JSON).read_text())["sites"]
    trained = json.loads((folder / MODEL_DIR / "detector.json").read_text())
    return {
        **json.loads((folder / ALL_METRICS).read_text()),
        "data_fingerprint": json.loads((folder / EVALUATION).read_text())["data_fingerprint"],
        "sites": across,
        "train_seconds": train_seconds,
        "train_slices_per_s": trained["final_metrics"].get("train_slices_per_s"),
        "epochs": trained["epochs_trained"],
        "mlflow_run_id": trained["mlflow_run_id"],
    }


def trained_seconds(params: Params, folder: Path, row: dict) -> float | None:
    """The training time of the model in ``folder``, if it was trained on today's processed data:
    its report row's, or, where an interrupted comparison left a model but no row, the length of
    the training run whose ``data.fingerprint`` MLflow recorded."""
    if not (folder / MODEL_DIR / "weights.pt").is_file():
        return None
    current = processed_fingerprint(params.path(PROCESSED_DIR))
    if row:
        return row["train_seconds"] if row.get("data_fingerprint") == current else None
    run = tracking.client(params).get_run(json.loads((folder / MODEL_DIR / "detector.json").read_text())["mlflow_run_id"])
    if run.data.params.get("data.fingerprint") != current or not run.info.end_time:
        return None
    return (run.info.end_time - run.info.start_time) / 1000


def _in_store(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _log_to_mlflow(params: Params, results: dict) -> None:
    client = tracking.client(params)
    parent = client.create_run(tracking.experiment_id(params), run_name="comparison", tags={"brainomaly.comparison": "1"})
    run_id = parent.info.run_id
    client.log_param(run_id, "detectors", ",".join(results))
    for name, metrics in results.items():
        if _in_store(client, metrics["mlflow_run_id"]):  # a row kept from a report written elsewhere has no run here
            client.set_tag(metrics["mlflow_run_id"], "mlflow.parentRunId", run_id)  # nests the run in the UI
        for key in ("slice_auroc", "pixel_auroc", "dice_mean", "cv_auroc_mean_t20", "inference_ms_per_slice"):
            if key in metrics:
                client.log_metric(run_id, f"{name}.{key}", float(metrics[key]))
        for site, found in metrics.get("sites", {}).items():
            for key, value in (("slice_auroc", found["slice_auroc"]), ("pixel_auprc", found["pixel_auprc"]),
                               *((f"{kind}.{k}", found[kind][k]) for kind in ("deployed", "calibrated")
                                 for k in ("slice_false_alarm_rate", "dice_mean"))):
                client.log_metric(run_id, f"{name}.site.{site}.{key}", float(value))
    for path in (REPORT_JSON, REPORT_MD):
        client.log_artifact(run_id, str(params.path(path)))
    client.set_terminated(run_id)
