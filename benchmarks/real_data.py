"""Real scans end to end: detectors trained on real healthy scans and tested on real tumours, the
cost of training on phantoms instead, and what the served phantom-trained default says of real scans.

    python benchmarks/real_data.py --healthy DIR --tumour DIR [--modality t1] [--only NAME ...]
        [--served-modality t2] [--served-extra FILE ...] [--candidates NAME ...]
        [--skip real phantoms served candidates] [--output benchmarks/results/real_data.json]

1. **Trained on real scans.** A workspace, artifacts/real_data/, whose params.yaml is the
   project's with the data section pointed at the two folders (any layout the readers know: IXI
   with its brain masks, BraTS 2018-2023, ...) and the tumour cohort split 25 % validation / 75 %
   test (no tumour scan is trained on), runs `preprocess` and `validate`, then `brainomaly
   compare` over DETECTORS: each is trained on the healthy folder's training subjects and
   evaluated with the full protocol on the held-out healthy subjects and the tumour test scans.
   ``--only`` reruns some detectors and keeps the other rows trained on the same data.
2. **The cost of phantoms.** The default detector and ``--phantom-detectors`` trained on the
   project's phantoms at the same modality (artifacts/real_data/phantoms_<modality>/) against
   the same detectors from step 1; all score the real test scans through the endpoint's
   predictor, the phantom-trained ones both at their deployed thresholds and calibrated on the
   real healthy validation scans as `brainomaly calibrate --site` would (a site's own scans).
3. **The served default on real scans.** The champion of the project's registry (what `make run`
   trains on phantoms and registers) scores every scan of the tumour folder at
   ``--served-modality``, and each ``--served-extra`` file (a volume verdict: no segmentation).
4. **Candidates for the served default.** Each of ``--candidates`` (CANDIDATES) trained on the
   phantoms at ``--served-modality`` as `brainomaly compare` trains it, then scoring the same
   scans as step 3 through the endpoint's predictor, at its own deployed thresholds.

Slices are abnormal with more than ``evaluate.min_tumour_pixels`` tumour pixels, as everywhere;
intervals are 95 % bootstrap intervals over subjects. Writes the JSON and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from components.atomic import write_json
from components.data.layouts import Subject, read_dataset
from components.data.nifti_io import load_volume
from components.metrics.detection import slice_truth
from components.metrics.operating_point import with_intervals
from components.preprocess.geometry import axial_axis
from pipelines import compare
from pipelines.errors import StageError
from pipelines.evaluate import calibrate
from pipelines.model_store import resolve_version
from pipelines.params import Params, load_params
from pipelines.register import build_bundle
from pipelines.sites import score_subjects
from pipelines.tracking import tracking_uri
from pipelines.workspace import create, run_stage
from serving.model_source import load_predictor
from components.scoring.predictor import VolumePredictor
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = Path("artifacts/real_data")
# Both baselines (the denoising autoencoder is also the default), the previous default
# (spatial_vae) and the best of the cross-site comparison (benchmarks/results/cross_site.json:
# slice AUROC for dense_ae, pixel AUPRC for ce_dvae and vae_ce).
DETECTORS = ["intensity", "denoising_ae", "spatial_vae", "dense_ae", "ce_dvae", "vae_ce"]
# Trained on phantoms at the real scans' modality (besides the default), against the same trained
# on real scans: the previous default and the best of the real-scan comparison.
PHANTOM_DETECTORS = ["spatial_vae", "ce_dvae"]
# Candidates for the served default: the previous default, the dense-bottleneck detectors and both baselines.
CANDIDATES = ["intensity", "denoising_ae", "spatial_vae", "dense_ae", "dense_vae", "ce_dvae"]
TUMOUR_SPLIT = {"train": 0.0, "val": 0.25, "test": 0.75}
COLUMNS = {  # report key: table heading
    "slice_auroc": "slice AUROC", "slice_auprc": "slice AUPRC", "pixel_auroc": "pixel AUROC",
    "pixel_auprc": "pixel AUPRC", "dice_mean": "Dice", "best_dice_oracle": "best Dice",
    "slice_false_alarm_rate": "tumour-free slices flagged", "healthy_slice_false_alarm_rate": "healthy slices flagged",
    "volume_false_alarm_rate": "healthy volumes flagged",
}


def workspace(params: Params, folder: Path, healthy: Path, tumour: Path, modality: str) -> Params:
    """A workspace of ``healthy`` and ``tumour`` at ``modality``, preprocessed and validated; its
    runs go to its own MLflow store."""
    data = {"healthy_root": str(healthy.resolve()), "tumour_root": str(tumour.resolve()), "modality": modality,
            "healthy_layout": "auto", "tumour_layout": "auto", "sites_root": str(params.path(folder) / "no_sites")}
    created = load_params(create(params, folder, {"data": data, "preprocess": {"tumour_split": TUMOUR_SPLIT}},
                                 linked=(Path("dvc.lock"),)) / "params.yaml")
    for stage in ("preprocess", "validate"):
        run_stage(stage, created.root, created)
    return created


def bundle_predictor(params: Params, name: str) -> VolumePredictor:
    """The model a workspace trained and evaluated, as the endpoint would serve it."""
    with tempfile.TemporaryDirectory() as tmp:
        build_bundle(params, Path(tmp) / "bundle")
        return VolumePredictor.from_folder(Path(tmp) / "bundle", name)


def served_predictor(params: Params) -> VolumePredictor:
    uri = f"models:/{params.registry.model_name}@{params.registry.alias}"
    name, version = resolve_version(uri, tracking_uri(params))
    return replace(load_predictor(name, version, tracking_uri(params)), thin_slices=params.serve.thin_slices)


def scan_rows(predictor: VolumePredictor, subjects: list[Subject]) -> pd.DataFrame:
    """One row per scored slice: subject, cohort, slice, score, tumour_pixels (on the input grid)
    and the volume's score. An image with a brain mask beside it is sent skull-stripped, as a
    user sends a scan to the endpoint."""
    rows = []
    for subject in tqdm(subjects, desc=f"{predictor.bundle.model_name} ({predictor.model_name})", unit="scan"):
        image, affine = load_volume(subject.image)
        if subject.brain_mask is not None:
            image = np.where(load_volume(subject.brain_mask)[0] > 0, image, 0)
        seg = load_volume(subject.segmentation)[0] > 0 if subject.segmentation else np.zeros(image.shape, bool)
        result = predictor.predict(image, affine)
        axis = axial_axis(affine)
        rows += [{"subject": subject.subject_id, "cohort": subject.cohort, "slice": s["index"], "score": s["score"],
                  "tumour_pixels": int(np.take(seg, s["index"], axis=axis).sum()), "volume_score": result["volume_score"]}
                 for s in result["slices"]]
    return pd.DataFrame(rows)


def scan_metrics(rows: pd.DataFrame, predictor: VolumePredictor, min_tumour_pixels: int, samples: int) -> dict:
    """The operating point (with_intervals) at the predictor's thresholds, plus slice AUROC per tumour scan."""
    abnormal, rated = slice_truth(rows["tumour_pixels"].to_numpy(), np.zeros(len(rows)), min_tumour_pixels)
    slices = pd.DataFrame({"subject": rows["subject"], "abnormal": abnormal, "rated": rated,
                           "tumour_free": rows["tumour_pixels"].to_numpy() == 0, "score": rows["score"]})
    subjects = rows.groupby("subject", sort=False).agg(cohort=("cohort", "first"), volume_score=("volume_score", "first"))
    subjects = subjects.reset_index().assign(dice=np.nan)
    calibration = predictor.bundle.calibration
    found = with_intervals(slices, subjects, calibration.slice_threshold, calibration.volume_threshold, samples)
    per_scan = {subject: float(roc_auc_score(group["abnormal"], group["score"]))
                for subject, group in slices[slices["rated"]].groupby("subject") if group["abnormal"].nunique() == 2}
    found.pop("dice_mean")
    found["ci95"].pop("dice_mean", None)
    return {**found, "slice_auroc_per_scan": per_scan, "tumour_scans": int((subjects["cohort"] == "tumour").sum()),
            "healthy_scans": int((subjects["cohort"] == "healthy").sum())}


def split_subjects(params: Params, split: str, cohorts: tuple[str, ...] = ("healthy", "tumour")) -> list[Subject]:
    """The subjects of one split of a preprocessed workspace, as its readers found them."""
    volumes = pd.read_parquet(params.path("data/processed/volumes.parquet"))
    chosen = set(volumes.loc[volumes["split"] == split, "subject"])
    data = params.data
    found = [*read_dataset(params.path(data.healthy_root), data.healthy_layout, data.modality, "healthy"),
             *read_dataset(params.path(data.tumour_root), data.tumour_layout, data.modality, "tumour")]
    return [s for s in found if s.subject_id in chosen and s.cohort in cohorts]


def trained_on_real(params: Params, args) -> Params:
    real = workspace(params, WORKSPACE, args.healthy, args.tumour, args.modality)
    compare.run(real, only=args.only or DETECTORS)
    return real


def real_rows(real: Params) -> dict:
    """The comparison's rows, as far as it got (it writes its report after each detector)."""
    rows = json.loads(real.path(compare.REPORT_JSON).read_text())
    return {name: {**{k: row.get(k) for k in COLUMNS}, "ci95": row.get("ci95", {}), "epochs": row.get("epochs"),
                   "train_seconds": row.get("train_seconds")} for name, row in rows.items()}


def trained_on_phantoms(params: Params, modality: str, detectors: list[str]) -> dict[str, tuple[VolumePredictor, dict]]:
    """``detectors`` trained on the phantoms at ``modality`` as `compare` trains them
    (artifacts/real_data/phantoms_<modality>/; one already trained there is kept): each as the
    endpoint would serve it, with its comparison row (epochs, train_seconds, the phantom metrics)."""
    phantoms = workspace(params, WORKSPACE / f"phantoms_{modality}", params.path(params.phantoms.hcp_root),
                         params.path(params.phantoms.brats_root), modality)
    report = phantoms.path(compare.REPORT_JSON)
    trained = set(json.loads(report.read_text())) if report.is_file() else set()
    if missing := [name for name in detectors if name not in trained]:
        compare.run(phantoms, only=missing)
    rows = json.loads(report.read_text())
    return {name: (bundle_predictor(load_params(phantoms.path(compare.WORKSPACES / name / "params.yaml")), f"{name} on phantoms"),
                   rows[name]) for name in detectors}


def site_calibrated(predictor: VolumePredictor, params: Params, healthy: list[Subject]) -> VolumePredictor:
    """``predictor`` with the thresholds `brainomaly calibrate --site` sets from a site's own healthy scans."""
    scoring = predictor.bundle.calibration.scoring
    reference, _ = score_subjects(predictor.detector, healthy, predictor.bundle.preprocess, params.preprocess.workers,
                                  scoring, "calibrate")
    target = params.calibrate.target_false_alarm_rate
    calibration = calibrate(reference, 100.0 * (1.0 - target), params.evaluate.pixel_threshold_percentile, scoring)
    return replace(predictor, bundle=replace(predictor.bundle, calibration=calibration))


def cost_of_phantoms(params: Params, real: Params, detectors: list[str], samples: int) -> dict:
    """Each detector trained on the phantoms, at its deployed thresholds and calibrated on the
    real healthy validation scans (a site's own), against the same detector trained on the real
    healthy training scans; all on the real test scans through the endpoint's predictor."""
    subjects, calibration_scans = split_subjects(real, "test"), split_subjects(real, "val", ("healthy",))
    rows = {}
    for name, (phantom, _) in trained_on_phantoms(params, real.data.modality, detectors).items():
        on_real = bundle_predictor(load_params(real.path(compare.WORKSPACES / name / "params.yaml")), f"{name} trained on real")
        predictors = {"trained_on_phantoms": phantom, "trained_on_phantoms_site_calibrated": site_calibrated(phantom, params, calibration_scans),
                      "trained_on_real": on_real}
        rows[name] = {label: scan_metrics(scan_rows(predictor, subjects), predictor, params.evaluate.min_tumour_pixels, samples)
                      for label, predictor in predictors.items()}
    return {"test_scans": len(subjects), "calibration_scans": len(calibration_scans), "rows": rows}


def on_real_scans(predictor: VolumePredictor, params: Params, tumour: Path, modality: str, extra: list[Path]) -> dict:
    """A predictor's operating point on every scan of ``tumour`` at ``modality``, and its verdict
    on each ``extra`` scan (no segmentation)."""
    subjects = read_dataset(tumour, "auto", modality, "tumour")
    found = scan_metrics(scan_rows(predictor, subjects), predictor, params.evaluate.min_tumour_pixels,
                         params.evaluate.bootstrap_samples)
    verdicts = {}
    for path in extra:
        result = predictor.predict(*load_volume(path))
        verdicts[f"{path.parent.name}/{path.name}"] = {"volume_verdict": result["volume_verdict"], "volume_score": result["volume_score"],
                               "volume_threshold": result["volume_threshold"]}
    return {**found, "extra": verdicts}


def served_on_real(params: Params, tumour: Path, modality: str, extra: list[Path]) -> dict:
    predictor = served_predictor(params)
    return {"model": f"{predictor.model_name} v{predictor.model_version} ({predictor.bundle.model_name})",
            "modality": modality, **on_real_scans(predictor, params, tumour, modality, extra)}


def candidates_on_real(params: Params, tumour: Path, modality: str, extra: list[Path], detectors: list[str]) -> dict:
    """Each candidate for the served default trained on the phantoms at ``modality``, scoring the
    real tumour scans through the endpoint's predictor at its deployed thresholds."""
    rows = {}
    for name, (predictor, phantom_row) in trained_on_phantoms(params, modality, detectors).items():
        rows[name] = {**on_real_scans(predictor, params, tumour, modality, extra), "epochs": phantom_row.get("epochs"),
                      "train_seconds": phantom_row.get("train_seconds"), "phantom_slice_auroc": phantom_row.get("slice_auroc")}
    return {"modality": modality, "rows": rows}


def interval(metrics: dict, key: str) -> str:
    value, ci = metrics.get(key), metrics.get("ci95", {}).get(key)
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.2f}" + (f" [{ci['low']:.2f}, {ci['high']:.2f}]" if ci else "")


def print_tables(report: dict) -> None:
    console = Console(width=max(Console().width, 200))  # wide tables: a narrow terminal would fold every cell
    if "trained_on_real" in report:
        table = Table(title=f"Trained on {report['healthy']}, tested on {report['tumour']} ({report['modality']})")
        table.add_column("detector")
        for heading in COLUMNS.values():
            table.add_column(heading)
        for name, row in report["trained_on_real"].items():
            table.add_row(name, *(interval(row, key) for key in COLUMNS))
        console.print(table)
    keys = ("slice_auroc", "slice_sensitivity", "slice_false_alarm_rate", "healthy_slice_false_alarm_rate",
            "volume_sensitivity", "volume_false_alarm_rate")
    table = Table(title="Through the endpoint's predictor, at each model's deployed thresholds")
    for heading in ("model", "slice AUROC", "tumour slices caught", "tumour-free slices flagged",
                    "healthy slices flagged", "tumour scans anomalous", "healthy scans anomalous"):
        table.add_column(heading)
    for name, rows in report.get("cost_of_phantoms", {}).get("rows", {}).items():
        for label, metrics in rows.items():
            table.add_row(f"{name} {label.replace('_', ' ')}", *(interval(metrics, k) for k in keys))
    served = {f"served: {report['served']['model']}": report["served"]} if "served" in report else {}
    candidates = report.get("candidates", {})
    served |= {f"{name} trained on phantoms": row for name, row in candidates.get("rows", {}).items()}
    for label, metrics in served.items():
        modality = metrics.get("modality", candidates.get("modality"))
        table.add_row(f"{label} on {modality}", *(interval(metrics, k) for k in keys))
    if table.row_count:
        console.print(table)
    for label, metrics in served.items():
        said = [f"{path}: {v['volume_verdict']} ({v['volume_score']:.3g} against {v['volume_threshold']:.3g})"
                for path, v in metrics.get("extra", {}).items()]
        if said:
            console.print(f"{label}: " + "; ".join(said))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=Path, required=True, help="real healthy scans (IXI with brain masks, HCP, BIDS, ...)")
    parser.add_argument("--tumour", type=Path, required=True, help="real tumour scans with segmentations (BraTS)")
    parser.add_argument("--modality", default="t1", help="of the scans trained and tested on (t1, t1ce, t2, flair)")
    parser.add_argument("--only", nargs="*", help=f"some of {DETECTORS} (the other rows are kept)")
    parser.add_argument("--served-modality", default="t2", help="of the tumour scans the served default scores")
    parser.add_argument("--served-extra", nargs="*", type=Path, default=[], help="more scans for the served default's verdict")
    parser.add_argument("--phantom-detectors", nargs="*", default=PHANTOM_DETECTORS,
                        help="besides the default, detectors trained on phantoms at --modality against the same trained on --healthy")
    parser.add_argument("--candidates", nargs="*", default=CANDIDATES, help="detectors trained on phantoms at --served-modality")
    parser.add_argument("--skip", nargs="*", default=[], choices=("real", "phantoms", "served", "candidates"), help="steps not to run")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/real_data.json")
    args = parser.parse_args()
    for folder in (args.healthy, args.tumour):
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    for scan in args.served_extra:
        if not scan.is_file():
            parser.error(f"no such scan: {scan}")
    params = load_params(REPO / "params.yaml")
    report = {"machine": machine(), "healthy": args.healthy.resolve().name,
              "tumour": args.tumour.resolve().name, "modality": args.modality}  # folder names: the paths are the user's
    real = None
    if "real" not in args.skip:
        real = trained_on_real(params, args)
        report["trained_on_real"] = real_rows(real)
    if "phantoms" not in args.skip:
        # the real workspace under today's params (its rows were trained by an earlier run when "real" is skipped)
        real = real or workspace(params, WORKSPACE, args.healthy, args.tumour, args.modality)
        detectors = list(dict.fromkeys([params.model.name, *args.phantom_detectors]))
        report["cost_of_phantoms"] = cost_of_phantoms(params, real, detectors, params.evaluate.bootstrap_samples)
    if "served" not in args.skip:
        report["served"] = served_on_real(params, args.tumour, args.served_modality, args.served_extra)
    if "candidates" not in args.skip:
        report["candidates"] = candidates_on_real(params, args.tumour, args.served_modality, args.served_extra,
                                                  args.candidates)
    # The steps not run keep their earlier results, read just now: another run may have written some;
    # so do the candidates not rerun.
    earlier = json.loads(args.output.read_text()) if args.output.is_file() else {}
    kept = earlier.get("candidates", {})
    if "candidates" in report and kept.get("modality") == report["candidates"]["modality"]:
        report["candidates"]["rows"] = kept["rows"] | report["candidates"]["rows"]
    report = earlier | report
    write_json(args.output, report)
    print_tables(report)


if __name__ == "__main__":
    try:
        main()
    except StageError as err:  # a stage's own one-line reason (no IXI files, a failed gate, ...), not a traceback
        raise SystemExit(f"real_data: {err}") from None
