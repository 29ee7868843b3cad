"""Stage `evaluate`: thresholds from healthy validation slices, then the test-split metrics.

Slice-wise: AUROC/AUPRC, and accuracy/F1 at the validation threshold. Pixel-wise, as the
spatial-autoencoder paper: each subject's maps median-filtered (``evaluate.pixel_median``) inside an eroded brain,
AUROC/AUPRC over brain voxels, the IntroVAE paper's rectified ROC-AUC (per subject, Z-scored
maps inside the brain, 1000 operating thresholds; mean and std over subjects), Dice per subject
after thresholding at the healthy validation percentile and dropping 3-D components under
``evaluate.min_component_voxels``; the best mean Dice one threshold reaches (every distinct
map value tried, the same component removal and per-subject mean) is reported apart, as
``best_dice_oracle`` (it peeks at the test labels: a ceiling, not a result).
Slice metrics are also given for each T of ``evaluate.tumour_pixel_sizes`` (``_t<T>``), and the
inference time per slice (batches of 64, on the evaluating machine) as the paper's speed column.
The dual-VAE paper's cross-validated protocol (``cv_*_t<T>``: the F1-best percentile chosen on
one fifth of the tumour cohort's val + test slices, metrics on the rest, mean and std over 5
folds) is computed for the detector's score and for each alternative score its paper compares
against (``alternative_scores``).

Thresholds are split-conformal on the healthy validation scans (components/metrics/conformal.py);
the rates those scans can guarantee are reported beside them (``guaranteed_false_alarm_rates``:
4 validation volumes guarantee no better than 1/5), and every rate at them carries its count and
exact binomial interval (``counts``, and ``ci95``: exact for rates, bootstrap for the rest).

Writes metrics/evaluate.json (the headline metrics: DVC metrics), reports/evaluation.json
(every metric), plots/roc_slice.csv and three figures (curves, score histograms, example
slices; DVC plots), models/calibration.json (thresholds + reference scores) and the evidence the
promotion gate compares (models/test_scores.parquet: each rated test slice's label and score;
models/evaluation.json: the fingerprint of the data and labels evaluated on), read by `register`; logs
the metrics and figures to the training run in MLflow.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.atomic import atomic_path, write_json, write_text
from components.data.slice_store import load_slices, processed_fingerprint, read_index, slice_spacing
from components.metrics.detection import (
    best_dice, dice_by_subject, dice_per_subject, fold_metrics_by_size, lesion_kind_metrics, other_lesion_metrics, pixel_metrics,
    rectified_auroc_per_subject, roc_table, slice_labels, slice_metrics, slice_metrics_by_size, slice_truth,
)
from components.metrics.conformal import conformal_threshold
from components.metrics.operating_point import OPERATING_POINT, metric_frames, with_intervals
from components.reports import figures
from components.metrics.postprocess import segment, smooth_by_subject, subject_blocks
from components.models.calibration import Calibration, Scoring
from components.models.inference import reconstruct_slices, resolve_device, score_slices, with_reference
from components.models.registry import build_detector
from components.scoring.volume import volume_score
from pipelines import tracking
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.train import MODEL_DIR

METRICS = Path("metrics/evaluate.json")  # the headline: what `dvc metrics show` prints
ALL_METRICS = Path("reports/evaluation.json")
HEADLINE = ("slice_auroc", "slice_auprc", "slice_false_alarm_rate", "volume_false_alarm_rate", "slice_sensitivity",
            "pixel_auroc", "pixel_auprc", "dice_mean", "slice_threshold", "inference_ms_per_slice")
TEST_SCORES = Path("models/test_scores.parquet")
EVALUATION = Path("models/evaluation.json")
ROC_PLOT = Path("plots/roc_slice.csv")
FIGURES = {name: Path(f"plots/{name}.png") for name in ("curves", "score_histogram", "examples")}
EXAMPLE_SLICES = 4
CALIBRATION = Path("models/calibration.json")


def load_trained(params: Params) -> tuple[torch.nn.Module, dict]:
    folder = params.path(MODEL_DIR)
    if not (folder / "weights.pt").is_file():
        raise FileNotFoundError(f"no trained detector in {folder}: run `brainomaly train` first")
    description = json.loads((folder / "detector.json").read_text())
    detector = build_detector(description["model_name"], **description["hyperparams"])
    detector.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    return detector.to(resolve_device(params.evaluate.device)).eval(), description


def score_split(detector, root: Path, index: pd.DataFrame, scoring: Scoring = Scoring(),
                progress: str | None = None) -> dict:
    """Slices of ``index`` with their anomaly maps, slice scores and post-processed maps (the
    pixel-wise protocol's per-subject median filter inside an eroded brain), as ``scoring`` says."""
    arrays = load_slices(root, index)
    start = time.perf_counter()
    scored = score_slices(detector, arrays["images"], arrays["brain"], precision=scoring.precision, progress=progress)
    seconds = time.perf_counter() - start
    index = index.reset_index(drop=True)
    # one key per subject everywhere below: raw ids are unique within a dataset only
    index = index.assign(subject=index["dataset"].astype(str) + "/" + index["subject"].astype(str))
    maps, scores, alternatives, _ = with_reference(scored, scoring.reference, index["subject"].to_numpy())
    smoothed = smooth_by_subject(maps, arrays["brain"], index["subject"].to_numpy(), scoring.pixel_median,
                                 scoring.median_spacing(slice_spacing(index)))
    return {**arrays, "maps": maps, "smoothed": smoothed, "scores": scores, "alternatives": alternatives, "index": index,
            "ms_per_slice": 1000 * seconds / max(len(index), 1)}


def segment_subjects(split: dict, threshold: float, min_voxels: int) -> np.ndarray:
    """Each subject's post-processed maps thresholded in 3-D, components under ``min_voxels`` dropped."""
    prediction = np.zeros(split["smoothed"].shape, bool)
    for rows in subject_blocks(split["index"]["subject"].to_numpy()):
        prediction[rows] = segment(split["smoothed"][rows], threshold, min_voxels)
    return prediction


def calibrate(val: dict, percentile: float, pixel_percentile: float, scoring: Scoring = Scoring()) -> Calibration:
    """Split-conformal thresholds from healthy scans (components/metrics/conformal.py): slices
    and volumes for a false-alarm rate of 1 - ``percentile`` / 100, the pixel threshold for
    1 - ``pixel_percentile`` / 100 of healthy brain pixels' post-processed maps, in the units of
    the ``scoring`` that ``val`` was scored with."""
    volumes = val["index"].assign(score=val["scores"]).groupby("subject")["score"].agg(volume_score)
    found = {"slice": conformal_threshold(val["scores"], 1.0 - percentile / 100.0),
             "volume": conformal_threshold(volumes, 1.0 - percentile / 100.0),
             "pixel": conformal_threshold(val["smoothed"][val["brain"]], 1.0 - pixel_percentile / 100.0)}
    return Calibration(
        percentile=percentile,
        slice_threshold=found["slice"].threshold,
        volume_threshold=found["volume"].threshold,
        pixel_threshold=found["pixel"].threshold,
        reference_scores=[round(float(s), 6) for s in val["scores"]],
        score_reference=scoring.reference,
        precision=scoring.precision,
        scans=len(volumes),
        guaranteed_rates={kind: round(t.guaranteed_rate, 6) for kind, t in found.items()},
        pixel_median=scoring.pixel_median,
        median_shape=scoring.median_shape,
    )


def run(params: Params) -> dict:
    detector, description = load_trained(params)
    root = params.path(PROCESSED_DIR)
    index = read_index(root)
    settings = params.evaluate
    scoring = settings.scoring(detector.device)
    healthy_val = score_split(detector, root, index[(index["cohort"] == "healthy") & (index["split"] == "val")], scoring,
                              progress="evaluate: healthy val")
    calibration = calibrate(healthy_val, settings.threshold_percentile, settings.pixel_threshold_percentile, scoring)

    test = score_split(detector, root, index[index["split"] == "test"], scoring, progress="evaluate: test")
    # Other (non-tumour) lesions are neither tumour nor normal tissue: left out of the tumour
    # metrics, and scored on their own against lesion-free, tumour-free slices.
    labels, rated = slice_truth(test["index"]["tumour_pixels"], test["index"]["lesion_pixels"], settings.min_tumour_pixels)
    brain = test["brain"] & ~test["lesions"]
    segmented = segment_subjects(test, calibration.pixel_threshold, settings.min_component_voxels) & brain
    tumour_val = score_split(detector, root, index[(index["cohort"] == "tumour") & (index["split"] == "val")], scoring,
                             progress="evaluate: tumour val")
    tumour_cohort = pooled(tumour_val, test, test["index"]["cohort"].to_numpy() == "tumour")
    metrics = {
        **slice_metrics(test["scores"][rated], labels[rated], calibration.slice_threshold),
        **pixel_metrics(test["smoothed"], test["tumour"], brain),
        **rectified_auroc_per_subject(test["smoothed"], test["tumour"], brain, test["index"]["subject"].to_numpy()),
        **dice_per_subject(segmented, test["tumour"], test["index"]["subject"].to_numpy()),
        **best_dice(test["smoothed"], test["tumour"], brain, test["index"]["subject"].to_numpy(), settings.min_component_voxels),
        **slice_metrics_by_size(test["scores"], test["index"]["tumour_pixels"], test["index"]["lesion_pixels"],
                                settings.tumour_pixel_sizes, calibration.slice_threshold),
        **cross_validated(tumour_cohort, tumour_cohort["scores"], healthy_val["scores"], settings.tumour_pixel_sizes),
        **other_lesion_metrics(test["scores"], test["index"]["tumour_pixels"], test["index"]["lesion_pixels"],
                               calibration.slice_threshold),
        **lesion_kind_metrics(test["scores"], test["index"], calibration.slice_threshold, settings.lesion_kinds),
        "inference_ms_per_slice": test["ms_per_slice"],
        "slice_threshold": calibration.slice_threshold,
        "pixel_threshold": calibration.pixel_threshold,
        "volume_threshold": calibration.volume_threshold,
        "calibration_scans": calibration.scans,  # healthy val scans, and the false-alarm rates they guarantee
        "guaranteed_false_alarm_rates": calibration.guaranteed_rates,
    }
    metrics |= operating_point(test, labels, rated, segmented, calibration, settings.bootstrap_samples)
    alternatives = {
        name: {"slice_auroc": slice_metrics(values[rated], labels[rated], np.inf)["slice_auroc"],
               **cross_validated(tumour_cohort, tumour_cohort["alternatives"][name], healthy_val["alternatives"][name],
                                 settings.tumour_pixel_sizes)}
        for name, values in test["alternatives"].items()
    }
    if alternatives:
        metrics["alternative_scores"] = alternatives
    _write(params, metrics, roc_table(test["scores"][rated], labels[rated]), calibration)
    _write_evidence(params, test, labels, rated, root)
    _draw(params, detector, test, labels, rated, calibration)
    _log_to_mlflow(params, tracking.training_run(params, description["ray_run_name"]), metrics)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def operating_point(split: dict, labels: np.ndarray, rated: np.ndarray, segmented: np.ndarray,
                    calibration: Calibration, samples: int) -> dict:
    """False alarms and sensitivity at the calibrated thresholds, and the 95 % intervals over
    subjects of those and of slice AUROC / AUPRC and Dice (components/metrics/operating_point.py)."""
    index = split["index"]
    dice = dice_by_subject(segmented, split["tumour"], index["subject"].to_numpy())
    slices, subjects = metric_frames(index, split["scores"], labels, rated, dice)
    found = with_intervals(slices, subjects, calibration.slice_threshold, calibration.volume_threshold, samples)
    return {k: v for k, v in found.items() if k in (*OPERATING_POINT, "ci95", "counts")}


def pooled(first: dict, second: dict, rows: np.ndarray) -> dict:
    """Index, scores and alternative scores of ``first`` followed by ``second``'s ``rows``."""
    return {
        "index": pd.concat([first["index"], second["index"][rows]], ignore_index=True),
        "scores": np.concatenate([first["scores"], second["scores"][rows]]),
        "alternatives": {k: np.concatenate([v, second["alternatives"][k][rows]]) for k, v in first["alternatives"].items()},
    }


def cross_validated(split: dict, scores: np.ndarray, healthy_scores: np.ndarray, sizes: list[int]) -> dict:
    rows = split["index"]
    return fold_metrics_by_size(scores, rows["tumour_pixels"], rows["lesion_pixels"], healthy_scores, sizes)


def _draw(params: Params, detector, test: dict, labels: np.ndarray, rated: np.ndarray, calibration: Calibration) -> None:
    """The papers' figures: curves of every score, score histograms, and example slices."""
    scores = {"score": test["scores"][rated]} | {name: v[rated] for name, v in test["alternatives"].items()}
    figures.curves(scores, labels[rated], params.path(FIGURES["curves"]))
    figures.histograms(test["scores"][rated & ~labels], test["scores"][labels], calibration.slice_threshold,
                       params.path(FIGURES["score_histogram"]))
    # Each subject's slice with the most tumour, for the subjects with the most (then tumour-free ones).
    largest = test["index"].reset_index().sort_values("tumour_pixels", ascending=False, kind="stable")
    largest = largest.drop_duplicates("subject")["index"].to_numpy()[:EXAMPLE_SLICES]
    figures.example_grid(test["images"][largest], reconstruct_slices(detector, test["images"][largest]), test["smoothed"][largest], test["tumour"][largest],
                         params.path(FIGURES["examples"]))


def _write(params: Params, metrics: dict, roc: pd.DataFrame, calibration: Calibration) -> None:
    write_json(params.path(ALL_METRICS), metrics)
    write_json(params.path(METRICS), {k: metrics[k] for k in HEADLINE if k in metrics})
    write_text(params.path(ROC_PLOT), roc.to_csv(index=False))
    write_json(params.path(CALIBRATION), asdict(calibration))


def _write_evidence(params: Params, test: dict, labels: np.ndarray, rated: np.ndarray, root: Path) -> None:
    """What the promotion gate compares: each rated test slice (subject, slice, label, score),
    and which data they came from."""
    rows = test["index"][rated]
    table = pd.DataFrame({"subject": rows["subject"].to_numpy(), "slice": rows["slice"].to_numpy(),
                          "abnormal": labels[rated], "score": test["scores"][rated].astype(np.float64)})
    with atomic_path(params.path(TEST_SCORES)) as tmp:
        table.to_parquet(tmp, index=False)
    write_json(params.path(EVALUATION), {**evaluation_identity(root, params.evaluate.min_tumour_pixels),
                                         "test_slices": len(table)})


def evaluation_identity(root: Path, min_tumour_pixels: int) -> dict:
    """What makes two evaluations comparable: the processed data, and how their slices are rated
    and labelled (the label rule's code and its setting). The promotion gate compares a candidate
    with the champion only when ``evaluation_fingerprint`` matches."""
    rule = "".join(inspect.getsource(f) for f in (slice_truth, slice_labels))
    labels = {"min_tumour_pixels": min_tumour_pixels, "rule_sha256": hashlib.sha256(rule.encode()).hexdigest()[:12]}
    data = processed_fingerprint(root)
    identity = json.dumps({"data": data, "labels": labels}, sort_keys=True).encode()
    return {"data_fingerprint": data, "labels": labels, "evaluation_fingerprint": hashlib.sha256(identity).hexdigest()[:12]}


def _log_to_mlflow(params: Params, run_id: str, metrics: dict) -> None:
    client = tracking.client(params)
    for key, value in flatten_metrics(metrics).items():
        client.log_metric(run_id, f"test_{key}", float(value))
    for path in (ROC_PLOT, ALL_METRICS, *FIGURES.values()):
        client.log_artifact(run_id, str(params.path(path)), artifact_path="evaluation")


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{'alternative_scores': {'input_l2': {'slice_auroc': 0.9}}} -> {'alternative_scores.input_l2.slice_auroc': 0.9}."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        flat |= flatten_metrics(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return flat
