"""Stage `sites`: the pipeline's model on scans from other sites, as a radiology group would meet it.

Each folder of ``data.sites_root`` is a site, holding ``healthy/`` and ``tumour/`` scans in any
supported layout (the phantoms stage writes every site's scans of the same held-out subjects
there). Per site, the healthy scans sorted by id are split: the first
``calibrate.healthy_scans`` calibrate the site, the others test it with the tumour scans. Every
scan goes through the model's own recipe (the processed data's preprocessing spec, the one the
registered model carries) and its detector, as the endpoint scores it.

Reported per site: slice AUROC / AUPRC and pixel AUROC / AUPRC (threshold-free), the slice
AUROC of each alternative score (``alternative_slice_auroc``), and at two operating points,
each with 95 % intervals over subjects (components/metrics/operating_point.py):

- ``deployed``: the thresholds the model was calibrated with on the training site's healthy
  validation slices (models/calibration.json): what a site sees on its first day;
- ``calibrated``: thresholds recomputed from the site's own calibration scans at
  ``calibrate.target_false_alarm_rate`` (what `brainomaly calibrate --site` stores).

Which healthy scans calibrate is one draw among many, and with 10 scans one draw moves the
healthy slices and volumes flagged far. ``calibration_draws`` repeats the calibration over
random choices of the site's calibration scans among all its healthy ones and reports the
rates flagged of the others: their mean, what the conformal guarantee is about, and their spread.

Writes reports/sites.json and reports/sites.md, and logs ``site.<name>.*`` metrics to the
model's training run in MLflow.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from components.atomic import write_json, write_text
from components.data.layouts import Subject, read_dataset
from components.data.slice_store import SPACING_COLUMNS
from components.metrics.conformal import conformal_threshold
from components.metrics.detection import dice_by_subject, pixel_metrics, slice_truth
from components.metrics.operating_point import metric_frames, with_intervals
from components.metrics.postprocess import smooth_subject
from components.models.calibration import Calibration, Scoring
from components.models.inference import score_slices, with_reference
from components.preprocess.spec import PreprocessSpec
from components.reports.tables import site_markdown
from components.scoring.volume import volume_score
from pipelines import tracking
from pipelines.evaluate import CALIBRATION, calibrate, flatten_metrics, load_trained, segment_subjects
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR, process_subject

log = logging.getLogger(__name__)
REPORT_JSON = Path("reports/sites.json")
REPORT_MD = Path("reports/sites.md")
RANKING = ("slice_auroc", "slice_auprc")  # threshold-free: reported once per site
CALIBRATION_DRAWS = 200  # random choices of a site's calibration scans (calibration_draws)


def site_names(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"data.sites_root {root} is not a folder of sites (<site>/healthy, <site>/tumour); "
                                "with no other site's scans, make it an empty folder and the stage reports none")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def site_subjects(root: Path, modality: str) -> tuple[list[Subject], list[Subject]]:
    """(healthy, tumour) subjects of one site folder; a missing cohort folder is an empty list."""
    cohorts = []
    for cohort in ("healthy", "tumour"):
        folder = root / cohort
        cohorts.append(sorted(read_dataset(folder, "auto", modality, cohort), key=lambda s: s.subject_id)
                       if folder.is_dir() else [])
    return cohorts[0], cohorts[1]


def _preprocess(subject: Subject, spec: PreprocessSpec):
    try:
        return process_subject(subject, spec)[0]
    except (ValueError, OSError) as err:  # one unusable scan must not cost the site's others
        return str(err)


def score_subjects(detector, subjects: list[Subject], spec: PreprocessSpec, workers: int,
                   scoring: Scoring = Scoring(), progress: str | None = None) -> tuple[dict, list[dict]]:
    """The subjects' slices through the recipe and the detector, scored and post-processed per
    scan as ``scoring`` says (a progress bar named ``progress``): the arrays `evaluate` works on
    (index, with each slice's spacing; scores, maps and smoothed maps, brain, tumour, lesions),
    and the skipped scans."""
    parts, skipped = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        scans = zip(subjects, pool.map(_preprocess, subjects, repeat(spec)))
        for subject, slices in tqdm(scans, total=len(subjects), desc=progress, unit="scan", disable=progress is None):
            if isinstance(slices, str):
                log.warning("skipping %s: %s", subject.subject_id, slices)
                skipped.append({"subject": subject.subject_id, "error": slices})
                continue
            scored = with_reference(score_slices(detector, slices.images, slices.brain, precision=scoring.precision),
                                    scoring.reference)
            empty = np.zeros_like(slices.brain)
            parts.append({
                "index": pd.DataFrame({"subject": f"{subject.cohort}/{subject.subject_id}", "cohort": subject.cohort,
                                       "slice": slices.slice_numbers, "tumour_pixels": slices.tumour_pixels,
                                       "lesion_pixels": slices.lesion_pixels,
                                       **dict(zip(SPACING_COLUMNS, slices.spacing_mm))}),
                "scores": scored.scores, "alternatives": scored.alternatives, "maps": scored.maps,
                "smoothed": smooth_subject(scored.maps, slices.brain, scoring.pixel_median,
                                           scoring.median_spacing(slices.spacing_mm)),
                "brain": slices.brain,
                "tumour": slices.tumour if slices.tumour is not None else empty,
                "lesions": slices.lesions if slices.lesions is not None else empty,
            })
    if not parts:
        return {}, skipped
    joined = {key: np.concatenate([p[key] for p in parts]) for key in ("scores", "maps", "smoothed", "brain", "tumour", "lesions")}
    alternatives = {name: np.concatenate([p["alternatives"][name] for p in parts]) for name in parts[0]["alternatives"]}
    return {**joined, "alternatives": alternatives, "index": pd.concat([p["index"] for p in parts], ignore_index=True)}, skipped


def at_thresholds(test: dict, calibration: Calibration, min_tumour_pixels: int, min_component_voxels: int,
                  samples: int, ranking: bool) -> dict:
    """Ranking metrics and, at ``calibration``'s thresholds, false alarms, sensitivity and Dice, with intervals."""
    index = test["index"]
    labels, rated = slice_truth(index["tumour_pixels"], index["lesion_pixels"], min_tumour_pixels)
    brain = test["brain"] & ~test["lesions"]
    segmented = segment_subjects(test, calibration.pixel_threshold, min_component_voxels) & brain
    dice = dice_by_subject(segmented, test["tumour"], index["subject"].to_numpy())
    slices, subjects = metric_frames(index, test["scores"], labels, rated, dice)
    return with_intervals(slices, subjects, calibration.slice_threshold, calibration.volume_threshold, samples,
                          ranking=ranking)


def alternative_aurocs(test: dict, min_tumour_pixels: int) -> dict[str, float]:
    """Slice AUROC of each of the detector's alternative scores (by default the map's mean): how
    much the slice score itself transfers."""
    labels, rated = slice_truth(test["index"]["tumour_pixels"], test["index"]["lesion_pixels"], min_tumour_pixels)
    return {name: float(roc_auc_score(labels[rated], values[rated])) for name, values in test["alternatives"].items()}


def site_calibration(detector, healthy: list[Subject], spec: PreprocessSpec, deployed: Calibration, params: Params,
                     progress: str) -> tuple[Calibration, dict, list[dict]]:
    """The thresholds a site's own ``healthy`` scans set (calibrate.target_false_alarm_rate; pixels at
    evaluate.pixel_threshold_percentile), scored in the deployed model's units; the scored scans;
    and the scans skipped."""
    reference, skipped = score_subjects(detector, healthy, spec, params.preprocess.workers, deployed.scoring, progress)
    if not reference:
        raise ValueError(f"{progress}: none of the {len(healthy)} healthy scans could be used to calibrate")
    percentile = 100.0 * (1.0 - params.calibrate.target_false_alarm_rate)
    return calibrate(reference, percentile, params.evaluate.pixel_threshold_percentile, deployed.scoring), reference, skipped


def calibration_draws(scores: np.ndarray, subjects: np.ndarray, count: int, target: float,
                      draws: int = CALIBRATION_DRAWS, seed: int = 0) -> dict:
    """Healthy slices and volumes flagged when ``count`` of a site's healthy scans calibrate it,
    over ``draws`` random choices of them (``scores``: every healthy slice's, of ``subjects``):
    per draw, slice and volume thresholds as calibration sets them for ``target``, and the share
    of the other scans' slices and volumes above them. Per kind: the mean over draws (what the
    conformal guarantee bounds), its 5th, 50th and 95th percentiles (where one draw may land),
    and the share of draws whose rate is above ``target``."""
    volumes = pd.Series(scores).groupby(subjects).agg(volume_score)
    if not 1 <= count < len(volumes):
        raise ValueError(f"calibration draws need 1 to {len(volumes) - 1} of the {len(volumes)} healthy scans, got {count}")
    rng = np.random.default_rng(seed)
    flagged: dict[str, list[float]] = {"slice": [], "volume": []}
    for _ in range(draws):
        chosen = np.isin(volumes.index, rng.choice(volumes.index, count, replace=False))
        calibrating = np.isin(subjects, volumes.index[chosen])
        for kind, values, own in (("slice", scores, calibrating), ("volume", volumes.to_numpy(), chosen)):
            flagged[kind].append(float(np.mean(values[~own] > conformal_threshold(values[own], target).threshold)))
    return {"draws": draws, "calibration_scans": count, "healthy_scans": len(volumes), **{
        f"healthy_{kind}_false_alarm_rate": {"mean": float(np.mean(rates)),
                                             **{f"p{q:02d}": float(np.percentile(rates, q)) for q in (5, 50, 95)},
                                             "draws_above_target": float(np.mean(np.asarray(rates) > target))}
        for kind, rates in flagged.items()}}


def evaluate_site(detector, root: Path, spec: PreprocessSpec, deployed: Calibration, params: Params) -> dict:
    healthy, tumour = site_subjects(root, params.data.modality)
    count = params.calibrate.healthy_scans
    if len(healthy) <= count or not tumour:
        raise ValueError(f"site {root.name}: needs more than calibrate.healthy_scans={count} healthy scans and at least "
                         f"one tumour scan, found {len(healthy)} and {len(tumour)}")
    site, reference, skipped = site_calibration(detector, healthy[:count], spec, deployed, params,
                                                f"sites: {root.name}, calibration")
    test, more = score_subjects(detector, healthy[count:] + tumour, spec, params.preprocess.workers, deployed.scoring,
                                f"sites: {root.name}, test")
    if not test:
        raise ValueError(f"site {root.name}: no usable scan to test with")
    settings = params.evaluate
    found = {kind: at_thresholds(test, calibration, settings.min_tumour_pixels, settings.min_component_voxels,
                                 settings.bootstrap_samples, ranking=kind == "deployed")
             for kind, calibration in (("deployed", deployed), ("calibrated", site))}
    cohorts = test["index"].drop_duplicates("subject")["cohort"]
    others = (test["index"]["cohort"] == "healthy").to_numpy()
    calibrating = len(healthy[:count]) - len(skipped)
    draws = calibration_draws(np.concatenate([reference["scores"], test["scores"][others]]),
                              np.concatenate([reference["index"]["subject"], test["index"]["subject"][others]]),
                              calibrating, params.calibrate.target_false_alarm_rate) if others.any() else None
    return {
        "scans": {"calibration": len(healthy[:count]) - len(skipped), "healthy_test": int((cohorts == "healthy").sum()),
                  "tumour_test": int((cohorts == "tumour").sum()), "skipped": skipped + more},
        **_only(found["deployed"], RANKING),
        **pixel_metrics(test["smoothed"], test["tumour"], test["brain"] & ~test["lesions"]),
        "alternative_slice_auroc": alternative_aurocs(test, settings.min_tumour_pixels),
        **{kind: _without(values, RANKING) for kind, values in found.items()},
        "thresholds": {kind: {k: getattr(c, k) for k in ("slice_threshold", "volume_threshold", "pixel_threshold")}
                       for kind, c in (("deployed", deployed), ("calibrated", site))},
        "calibration_draws": draws,
    }


def draws_markdown(report: dict[str, dict]) -> str:
    """Each site's calibration draws as a markdown table (none without a site)."""
    def cell(draws: dict | None, kind: str) -> str:
        if draws is None:  # no healthy test scan was usable
            return "-"
        rates = draws[f"healthy_{kind}_false_alarm_rate"]
        return (f"{rates['mean']:.1%} [{rates['p05']:.1%}, {rates['p95']:.1%}]; "
                f"{rates['draws_above_target']:.0%} of draws above the target")

    rows = [{"site": site, **{f"healthy {kind}s flagged": cell(found["calibration_draws"], kind) for kind in ("slice", "volume")}}
            for site, found in report.items()]
    draws = next((found["calibration_draws"] for found in report.values() if found["calibration_draws"]), None)
    if draws is None:
        return ""
    return (f"### The other healthy scans flagged when {draws['calibration_scans']} of them calibrate, over "
            f"{draws['draws']} random draws of the {draws['calibration_scans']}: mean [5th, 95th percentile]\n\n"
            f"{pd.DataFrame(rows).to_markdown(index=False)}\n")


def _only(metrics: dict, keys: tuple[str, ...]) -> dict:
    return {k: metrics[k] for k in keys} | {"ci95": {k: metrics["ci95"][k] for k in keys if k in metrics["ci95"]}}


def _without(metrics: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in metrics.items() if k not in keys} | {
        "ci95": {k: v for k, v in metrics["ci95"].items() if k not in keys}}


def run(params: Params) -> dict:
    detector, description = load_trained(params)
    spec = PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json"))
    deployed = Calibration(**json.loads(params.path(CALIBRATION).read_text()))
    root = params.path(params.data.sites_root)
    report = {name: evaluate_site(detector, root / name, spec, deployed, params) for name in site_names(root)}
    if not report:
        log.warning("no site folders in %s: no other site to measure the model on", root)
    summary = {"model": description["model_name"], "target_false_alarm_rate": params.calibrate.target_false_alarm_rate,
               "sites": report}
    write_json(params.path(REPORT_JSON), summary)
    write_text(params.path(REPORT_MD), site_markdown({description["model_name"]: report}) + "\n" + draws_markdown(report))
    client = tracking.client(params)
    run_id = tracking.training_run(params, description["ray_run_name"])
    for key, value in flatten_metrics({"site": report}).items():
        if isinstance(value, (int, float)):
            client.log_metric(run_id, key, float(value))
    client.log_artifact(run_id, str(params.path(REPORT_MD)), artifact_path="evaluation")
    return {name: {"slice_auroc": round(r["slice_auroc"], 3), "pixel_auprc": round(r["pixel_auprc"], 3),
                   "false_alarms_deployed": round(r["deployed"]["slice_false_alarm_rate"], 3),
                   "false_alarms_calibrated": round(r["calibrated"]["slice_false_alarm_rate"], 3)}
            for name, r in report.items()}
