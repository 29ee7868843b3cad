"""Dice by tumour size: the served default's calibrated Dice at each unseen phantom site, per
tumour subject, against the size of its tumour.

    python benchmarks/dice_by_size.py [--params params.yaml] [--bins 5 20] [--real DIR [--modality t2]]
                                      [--output benchmarks/results/dice_by_size_<model>.json]

Runs after `make run`, on its model (or on a `brainomaly compare` workspace's: ``--params
artifacts/compare/<name>/params.yaml``). Each site other than the training one is scored as
`brainomaly sites` scores it: thresholds calibrated on the site's first calibrate.healthy_scans
healthy scans, then every tumour subject segmented (maps smoothed per subject, above the pixel
threshold, small components dropped) and its Dice taken. A tumour's size is its segmentation's
volume in millilitres (every label, edema included, as the metrics count it), read from its
file; each mean Dice comes with a 95 % bootstrap interval over subjects. The published
detectors' Dice of about 0.5 is on BraTS, whose gliomas are large (tens of millilitres and
more); the phantoms' run from a few millimetres to 4 cm, and this says how much of the missed
Dice target that explains. ``--real`` adds a folder of real tumour scans with segmentations,
scored the same way at the model's deployed thresholds (no healthy scans of that contrast to
calibrate on), with the threshold-free pixel AUROC / AUPRC and the best Dice one threshold
reaches (a ceiling: it peeks at the labels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.atomic import write_json  # noqa: E402
from components.machine import machine  # noqa: E402
from components.data.layouts import Subject, read_dataset  # noqa: E402
from components.metrics.detection import best_dice, dice_by_subject, pixel_metrics  # noqa: E402
from components.models.calibration import Calibration  # noqa: E402
from components.preprocess.spec import PreprocessSpec  # noqa: E402
from pipelines.evaluate import CALIBRATION, load_trained, segment_subjects  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.preprocess import PROCESSED_DIR  # noqa: E402
from pipelines.sites import score_subjects, site_calibration, site_names, site_subjects  # noqa: E402


def tumour_millilitres(segmentation: Path) -> float:
    image = nib.load(str(segmentation))
    return float((np.asarray(image.dataobj) > 0).sum() * np.prod(image.header.get_zooms()[:3]) / 1000.0)


def site_dice(detector, root: Path, spec: PreprocessSpec, deployed: Calibration, params) -> list[dict]:
    """Each tumour subject of the site: its tumour's volume and its Dice at the site's calibration."""
    healthy, tumour = site_subjects(root, params.data.modality)
    site, _, _ = site_calibration(detector, healthy[: params.calibrate.healthy_scans], spec, deployed, params,
                                  f"{root.name}: calibration")
    test, _ = score_subjects(detector, tumour, spec, params.preprocess.workers, deployed.scoring, f"{root.name}: tumour")
    return dice_rows(test, tumour, site.pixel_threshold, params.evaluate.min_component_voxels)


def dice_rows(test: dict, subjects: list[Subject], threshold: float, min_voxels: int) -> list[dict]:
    """Each scored tumour subject's tumour volume and Dice, its maps segmented at ``threshold``."""
    segmented = segment_subjects(test, threshold, min_voxels)
    dice = dice_by_subject(segmented & test["brain"] & ~test["lesions"], test["tumour"], test["index"]["subject"].to_numpy())
    return [{"subject": subject.subject_id, "tumour_ml": round(tumour_millilitres(subject.segmentation), 2),
             "dice": round(dice[f"tumour/{subject.subject_id}"], 4)}
            for subject in subjects if f"tumour/{subject.subject_id}" in dice]


def segmented_scans(folder: Path, modality: str) -> list[Subject]:
    """The tumour scans of ``folder`` (any layout) that have a segmentation beside them."""
    subjects = [subject for subject in read_dataset(folder, "auto", modality, "tumour") if subject.segmentation]
    if not subjects:
        raise SystemExit(f"{folder}: no {modality} tumour scan with a segmentation beside it: Dice needs one")
    return subjects


def real_dice(detector, folder: Path, subjects: list[Subject], spec: PreprocessSpec, deployed: Calibration, params) -> dict:
    """Real tumour scans at the model's deployed pixel threshold, with the threshold-free pixel
    AUROC / AUPRC and the best Dice one threshold reaches (a ceiling)."""
    test, _ = score_subjects(detector, subjects, spec, params.preprocess.workers, deployed.scoring, f"{folder.name}: tumour")
    brain, ids = test["brain"] & ~test["lesions"], test["index"]["subject"].to_numpy()
    rows = dice_rows(test, subjects, deployed.pixel_threshold, params.evaluate.min_component_voxels)
    ceiling = best_dice(test["smoothed"], test["tumour"], brain, ids, params.evaluate.min_component_voxels)
    return {"folder": folder.name, **pixel_metrics(test["smoothed"], test["tumour"], brain),
            "best_dice_oracle": round(ceiling["best_dice_oracle"], 3), "subjects": rows}


def mean_with_interval(values: list[float], samples: int = 1000) -> dict:
    """The mean and its 95 % bootstrap interval over subjects (None for no subject)."""
    if not values:
        return {"mean_dice": None, "ci95": None}
    draws = np.random.default_rng(0).choice(values, size=(samples, len(values))).mean(axis=1)
    return {"mean_dice": round(float(np.mean(values)), 3),
            "ci95": [round(float(q), 3) for q in np.percentile(draws, [2.5, 97.5])]}


def by_bin(rows: list[dict], edges: list[float]) -> list[dict]:
    bounds = [0.0, *edges, float("inf")]
    summary = []
    for low, high in zip(bounds, bounds[1:]):
        dice = [row["dice"] for row in rows if low <= row["tumour_ml"] < high]
        summary.append({"tumour_ml": [low, None if high == float("inf") else high], "subjects": len(dice),
                        **mean_with_interval(dice)})
    return summary


def shown(found: dict) -> str:
    if found["mean_dice"] is None:
        return "-"
    low, high = found["ci95"]
    return f"{found['mean_dice']:.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--bins", type=float, nargs="+", default=[5.0, 20.0], help="bin edges, in millilitres")
    parser.add_argument("--real", type=Path, help="also real tumour scans with segmentations (e.g. BraTS), at the deployed thresholds")
    parser.add_argument("--modality", help="the real scans' modality (default: data.modality, the model's)")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/dice_by_size_<model>.json")
    args = parser.parse_args()
    if args.real and not args.real.is_dir():
        parser.error(f"no such folder: {args.real}")
    params = load_params(args.params)
    modality = args.modality or params.data.modality
    real = segmented_scans(args.real, modality) if args.real else []
    detector, description = load_trained(params)
    output = args.output or REPO / f"benchmarks/results/dice_by_size_{description['model_name']}.json"
    spec = PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json"))
    deployed = Calibration(**json.loads(params.path(CALIBRATION).read_text()))
    root = params.path(params.data.sites_root)
    sites = [name for name in site_names(root) if name != params.phantoms.spec.training_site] if root.is_dir() else []
    if not sites and not args.real:
        parser.error(f"no unseen site in data.sites_root ({root}) and no --real folder: nothing to measure")
    report = {}
    for name in sites:
        rows = site_dice(detector, root / name, spec, deployed, params)
        report[name] = {**mean_with_interval([r["dice"] for r in rows]), "bins": by_bin(rows, args.bins), "subjects": rows}
    if real:
        found = {**real_dice(detector, args.real, real, spec, deployed, params), "modality": modality}
        report[f"real {found['folder']}"] = {
            **mean_with_interval([r["dice"] for r in found["subjects"]]), "bins": by_bin(found["subjects"], args.bins), **found}
    write_json(output, {"machine": machine(), "model": description["model_name"], "sites": report})
    table = Table("site", "tumour mL", "subjects", "mean Dice [95 % interval]", title="Dice by tumour size: unseen sites at their calibration, real scans at the deployed thresholds")
    for name, found in report.items():
        for row in found["bins"]:
            low, high = row["tumour_ml"]
            span = f">= {low:g}" if high is None else f"{low:g} to {high:g}"
            table.add_row(name, span, str(row["subjects"]), shown(row))
        table.add_row(name, "all", str(len(found["subjects"])), shown(found), end_section=True)
    Console().print(table)
    for name, found in report.items():
        if "pixel_auprc" in found:
            print(f"{name}: pixel AUROC {found['pixel_auroc']:.3f}, pixel AUPRC {found['pixel_auprc']:.3f}, "
                  f"best Dice one threshold reaches {found['best_dice_oracle']:.3f} (a ceiling: it peeks at the labels)")


if __name__ == "__main__":
    main()
