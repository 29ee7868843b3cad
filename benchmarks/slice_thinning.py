"""What scoring every k-th slice of a thin-slice scan costs (serve.thin_slices): the network's time,
slice AUROC, false alarms and Dice, against scoring every slice, on the same scans.

    python benchmarks/slice_thinning.py [--tumour DIR] [--modality t2] [--output benchmarks/results/slice_thinning.json]

Runs after `make run`, with this repo's registered champion, scoring as the endpoint does
(components/scoring/predictor.py), each scan twice: every model slice, and every k-th with the
maps between interpolated (components/scoring/thinning.py; k = model pixel over slice spacing,
rounded down). By default the scans are the embedded BraTS-layout tumour phantoms resampled to
BraTS's 240 x 240 x 155 grid (as benchmarks/serving_load.py builds its volume; their labels
nearest); ``--tumour`` scores a folder of real scans on their own grid instead (any tumour layout
the readers know, with segmentations). Scans are sent skull-stripped, as a user sends them.

Per way: the network's seconds a scan (the shared scoring pass, median over scans, 2 threads),
slices scored, slice AUROC, tumour slices caught and tumour-free slices flagged at the model's
deployed thresholds (a slice is abnormal with more than ``evaluate.min_tumour_pixels`` tumour
pixels), and the Dice of the lesions a DICOM SEG draws against the segmentation, on the scan's own
grid; 95 % bootstrap intervals over scans, and the paired difference in Dice (thinned - every).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from tqdm import tqdm

from components.data.layouts import Subject, read_brats, read_dataset
from components.data.nifti_io import VolumeLimits, load_volume
from components.machine import machine
from components.metrics.detection import slice_truth
from components.metrics.operating_point import with_intervals
from components.models.inference import score_volumes
from components.preprocess.geometry import axial_axis
from components.scoring.predictor import Upload, VolumePredictor
from components.scoring.thinning import fill_between, take
from pipelines.params import load_params

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving_load import BRATS_SHAPE  # noqa: E402
from benchmarks.volume_verdicts import load_champion  # noqa: E402

WAYS = {"every slice": False, "every k-th slice": True}


def brats_sized(subject: Subject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom on BraTS's grid: image (linear), segmentation (nearest) and the affine."""
    image, affine = load_volume(subject.image)
    zoom = [n / m for n, m in zip(BRATS_SHAPE, image.shape)]
    seg = ndimage.zoom(load_volume(subject.segmentation)[0] > 0, zoom, order=0)
    return ndimage.zoom(image, zoom, order=1).astype(np.float32), seg, affine @ np.diag([1 / z for z in zoom] + [1.0])


def on_own_grid(subject: Subject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, affine = load_volume(subject.image)
    if subject.brain_mask is not None:
        image = np.where(load_volume(subject.brain_mask)[0] > 0, image, 0)
    return image, load_volume(subject.segmentation)[0] > 0, affine


def score_scan(predictor: VolumePredictor, image: np.ndarray, seg: np.ndarray, affine: np.ndarray) -> tuple[list, float, float]:
    """The scan through the endpoint's steps: (slice rows, the network's seconds, Dice)."""
    upload = Upload(image, affine)
    slices = predictor.prepare(upload, VolumeLimits())
    picked = predictor.scored_slices(slices)
    start = time.perf_counter()
    (scored,) = score_volumes(predictor.detector, [take(slices, picked)], predictor.bundle.calibration)
    seconds = time.perf_counter() - start
    answer = predictor.answer(upload, slices, picked, scored)
    filled = scored._replace(maps=fill_between(scored.maps, slices.geometry.kept, picked))
    mask = predictor.lesion_mask(slices, filled, predictor.bundle.calibration)
    dice = 2 * float((mask & seg).sum()) / max(float(mask.sum() + seg.sum()), 1.0)
    axis = axial_axis(affine)
    rows = [{"score": s["score"], "tumour_pixels": int(np.take(seg, s["index"], axis=axis).sum())} for s in answer["slices"]]
    return rows, seconds, dice


def measure(predictor: VolumePredictor, scans: list[tuple[str, tuple]], params) -> dict:
    rows, subjects, seconds, counted = [], [], [], []
    for case, (image, seg, affine) in tqdm(scans, desc=f"thin_slices={predictor.thin_slices}", unit="scan"):
        scan_rows, pass_seconds, dice = score_scan(predictor, image, seg, affine)
        rows += [{"subject": case, **row} for row in scan_rows]
        subjects.append({"subject": case, "cohort": "tumour", "volume_score": max(r["score"] for r in scan_rows),
                         "dice": dice})
        seconds.append(pass_seconds)
        counted.append(len(scan_rows))
    rows = pd.DataFrame(rows)
    abnormal, rated = slice_truth(rows["tumour_pixels"].to_numpy(), np.zeros(len(rows)), params.evaluate.min_tumour_pixels)
    slices = pd.DataFrame({"subject": rows["subject"], "abnormal": abnormal, "rated": rated,
                           "tumour_free": rows["tumour_pixels"].to_numpy() == 0, "score": rows["score"]})
    calibration = predictor.bundle.calibration
    found = with_intervals(slices, pd.DataFrame(subjects), calibration.slice_threshold, calibration.volume_threshold,
                           params.evaluate.bootstrap_samples)
    return {"network_seconds_median": round(float(np.median(seconds)), 3), "slices_scored_mean": float(np.mean(counted)),
            **{k: found[k] for k in ("slice_auroc", "slice_auprc", "slice_sensitivity", "slice_false_alarm_rate", "dice_mean")},
            "ci95": {k: v for k, v in found["ci95"].items() if k in ("slice_auroc", "slice_auprc", "slice_sensitivity",
                                                                       "slice_false_alarm_rate", "dice_mean")},
            "dice_per_scan": {s["subject"]: round(s["dice"], 4) for s in subjects}}


def paired_difference(every: dict, thinned: dict, samples: int, seed: int = 0) -> dict:
    """Mean per-scan Dice difference (thinned - every) with its 95 % bootstrap interval over scans."""
    cases = sorted(every)
    difference = np.array([thinned[c] - every[c] for c in cases])
    draws = np.random.default_rng(seed).choice(difference, (samples, len(difference))).mean(axis=1)
    return {"mean": float(difference.mean()), "low": float(np.quantile(draws, 0.025)),
            "high": float(np.quantile(draws, 0.975)), "worst": float(difference.min()), "best": float(difference.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tumour", type=Path, help="real tumour scans with segmentations (default: the phantoms on BraTS's grid)")
    parser.add_argument("--modality", default=None, help="default: data.modality of params")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "slice_thinning.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    modality = args.modality or params.data.modality
    if args.tumour:
        subjects, read = read_dataset(args.tumour, "auto", modality, "tumour"), on_own_grid
    else:
        subjects, read = read_brats(params.path(params.phantoms.brats_root), modality), brats_sized
    scans = [(s.subject_id, read(s)) for s in subjects]
    champion = replace(load_champion(params), min_component_voxels=params.evaluate.min_component_voxels)
    results = {way: measure(replace(champion, thin_slices=thin), scans, params) for way, thin in WAYS.items()}
    report = {"machine": machine(), "model": f"{champion.model_name} v{champion.model_version} ({champion.bundle.model_name})",
              "scans": str(args.tumour) if args.tumour else f"{params.phantoms.brats_root} on a {BRATS_SHAPE} grid",
              "modality": modality, "count": len(scans), "ways": results,
              "dice_difference": paired_difference(results["every slice"]["dice_per_scan"],
                                                   results["every k-th slice"]["dice_per_scan"],
                                                   params.evaluate.bootstrap_samples)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("way", "network s a scan", "slices scored", "slice AUROC", "tumour slices caught",
                  "tumour-free slices flagged", "Dice",
                  title=f"{report['model']} on {len(scans)} scans: {report['scans']} ({modality})")
    for way, found in results.items():
        cell = lambda key: f"{found[key]:.3f} [{found['ci95'][key]['low']:.3f}, {found['ci95'][key]['high']:.3f}]"  # noqa: E731
        table.add_row(way, f"{found['network_seconds_median']:.3f}", f"{found['slices_scored_mean']:.1f}", cell("slice_auroc"),
                      cell("slice_sensitivity"), cell("slice_false_alarm_rate"), cell("dice_mean"))
    Console(width=200).print(table)
    d = report["dice_difference"]
    print(f"Dice, thinned - every slice, per scan: mean {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], "
          f"from {d['worst']:+.4f} to {d['best']:+.4f}")


if __name__ == "__main__":
    main()
