"""How a model's maps are made and smoothed: calibrated Dice and pixel AUPRC at every site for
each residual sign, restoration pass count and median window of 1, 3 and 5 pixels.

    python benchmarks/pixel_median.py [--params params.yaml] [--windows 1 3 5]
                                      [--residuals absolute brighter] [--passes 1 2 3] [--cubic]
                                      [--precision bf16]
                                      [--output benchmarks/results/pixel_median_<model>.json]

Runs after `make run`, on its model (or a `brainomaly compare` workspace's: ``--params
artifacts/compare/<name>/params.yaml``). Each site is scored once, as `brainomaly sites` scores
it (the first calibrate.healthy_scans healthy scans calibrate, the other healthy scans and the
tumour scans test); then, per window, every scan's maps are median-filtered over that many
pixels in-plane and, through-plane, over no more millimetres (components/metrics/postprocess.py:
``median_window``; ``--cubic``: over as many slices as pixels, as before that rule), the site's
pixel threshold is set from its calibration scans (evaluate.pixel_threshold_percentile), and the test scans give the site report's pixel AUPRC, calibrated Dice (95 % intervals over
subjects) and share of healthy slices flagged, and the best Dice one threshold reaches on the
site's labels (a ceiling, not a result: it peeks). The AnoVAEGAN paper's window is 5 voxels of
about 1 mm; here a voxel is about 2.8 mm in-plane and 2-6 mm through-plane, so 5 erases lesions
under a centimetre across, and 1 keeps single-voxel noise; across 6 mm slices a cube of 3 spans
18 mm. ``--residuals`` scores a
reconstruction model's maps as each residual (absolute, brighter, darker:
``components.models.detector.residual_map``; the same weights, so no training) and smooths each
over every window; ``--passes`` restores the denoising autoencoder's slices in each number of
passes (``model.denoising_ae.passes``; the same weights), which moves the slice scores too: each
pass count's slice AUROC and healthy slices flagged are reported beside its maps. ``--precision
bf16`` scores every site in bf16 autocast instead of the precision the model was evaluated in
(``evaluate.precision``): the same weights, its thresholds set again in that arithmetic.
The training site's held-out scans choose the triple (``model.<name>.residual``, ``passes`` and
``evaluate.pixel_median``: the best calibrated Dice); the unseen sites show whether that choice
transfers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sklearn.metrics import roc_auc_score  # noqa: E402

from components.atomic import write_json  # noqa: E402
from components.data.slice_store import slice_spacing  # noqa: E402
from components.machine import machine  # noqa: E402
from components.metrics.detection import best_dice, pixel_metrics, slice_truth  # noqa: E402
from components.metrics.postprocess import smooth_by_subject  # noqa: E402
from components.models.calibration import PRECISIONS, Calibration, Scoring  # noqa: E402
from components.models.detector import RESIDUALS, ReconstructionDetector  # noqa: E402
from components.preprocess.spec import PreprocessSpec  # noqa: E402
from pipelines.evaluate import CALIBRATION, calibrate, load_trained  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.preprocess import PROCESSED_DIR  # noqa: E402
from pipelines.sites import at_thresholds, score_subjects, site_names, site_subjects  # noqa: E402


def smoothed_with(scored: dict, scoring: Scoring) -> dict:
    """``scored`` with its maps post-processed as ``scoring`` says instead."""
    index = scored["index"]
    spacing = scoring.median_spacing(slice_spacing(index))
    return {**scored, "smoothed": smooth_by_subject(scored["maps"], scored["brain"], index["subject"].to_numpy(),
                                                    scoring.pixel_median, spacing)}


def site_windows(detector, root: Path, spec: PreprocessSpec, deployed: Scoring, params, windows: list[int],
                 cubic: bool) -> dict:
    """The test scans' slice AUROC and, per window, the site's calibrated pixel threshold, pixel
    AUPRC and Dice (with its interval)."""
    healthy, tumour = site_subjects(root, params.data.modality)
    count, settings = params.calibrate.healthy_scans, params.evaluate
    reference, _ = score_subjects(detector, healthy[:count], spec, params.preprocess.workers, deployed,
                                  f"{root.name}: calibration")
    test, _ = score_subjects(detector, healthy[count:] + tumour, spec, params.preprocess.workers, deployed,
                             f"{root.name}: test")
    percentile = 100.0 * (1.0 - params.calibrate.target_false_alarm_rate)
    labels, rated = slice_truth(test["index"]["tumour_pixels"], test["index"]["lesion_pixels"],
                                settings.min_tumour_pixels)
    rows = {"slice_auroc": round(float(roc_auc_score(labels[rated], test["scores"][rated])), 4)}
    for window in windows:
        scoring = deployed._replace(pixel_median=window, median_shape="cubic" if cubic else "millimetres")
        site = calibrate(smoothed_with(reference, scoring), percentile, settings.pixel_threshold_percentile, scoring)
        scored = smoothed_with(test, scoring)
        found = at_thresholds(scored, site, settings.min_tumour_pixels, settings.min_component_voxels,
                              settings.bootstrap_samples, ranking=False)
        brain = scored["brain"] & ~scored["lesions"]
        pixels = pixel_metrics(scored["smoothed"], scored["tumour"], brain)
        ceiling = best_dice(scored["smoothed"], scored["tumour"], brain, scored["index"]["subject"].to_numpy(),
                            settings.min_component_voxels)
        rows[window] = {"pixel_threshold": site.pixel_threshold, "pixel_auprc": round(pixels["pixel_auprc"], 4),
                        "pixel_auroc": round(pixels["pixel_auroc"], 4), "dice": round(found["dice_mean"], 4),
                        "dice_ci95": [round(found["ci95"]["dice_mean"][end], 3) for end in ("low", "high")],
                        "healthy_slice_false_alarm_rate": round(found["healthy_slice_false_alarm_rate"], 4),
                        "best_dice_oracle": round(ceiling["best_dice_oracle"], 4)}
    return rows


def as_variant(detector, residual: str, passes: int):
    """The same detector, its maps made as ``residual`` (a detector that maps no residual keeps
    its own map) from a restoration in ``passes`` passes; its weights untouched."""
    if residual in RESIDUALS:
        if residual != detector.residual and type(detector).anomaly_map is not ReconstructionDetector.anomaly_map:
            raise SystemExit(f"{type(detector).__name__} makes its own maps: only its residual, {detector.residual}, "
                             "applies")
        detector.residual = residual
    if passes != getattr(detector, "passes", 1):
        if not hasattr(detector, "passes"):
            raise SystemExit(f"{type(detector).__name__} restores in one pass: --passes does not apply")
        detector.passes = passes
    return detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5], help="median windows, odd pixels")
    parser.add_argument("--cubic", action="store_true",
                        help="as many slices as pixels through-plane, however far apart the slices are")
    parser.add_argument("--residuals", nargs="+", choices=RESIDUALS,
                        help="residual signs to score a reconstruction model's maps as (default: its own)")
    parser.add_argument("--passes", type=int, nargs="+",
                        help="restoration passes to score the denoising autoencoder's maps in (default: its own)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the arithmetic of inference (default: the one the model was evaluated in)")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/pixel_median_<model>.json")
    args = parser.parse_args()
    if any(w < 1 or w % 2 == 0 for w in args.windows):
        parser.error(f"--windows must be odd numbers of voxels >= 1, got {args.windows}")
    if args.passes and min(args.passes) < 1:
        parser.error(f"--passes must be whole numbers >= 1, got {args.passes}")
    if not args.params.is_file():
        parser.error(f"no such params file: {args.params}")
    params = load_params(args.params)
    try:
        detector, description = load_trained(params)
    except FileNotFoundError as err:
        raise SystemExit(f"{err}") from None
    output = args.output or REPO / f"benchmarks/results/pixel_median_{description['model_name']}.json"
    if not params.path(CALIBRATION).is_file():
        raise SystemExit(f"{params.path(CALIBRATION)} is missing: run `brainomaly evaluate` first (its units are the model's)")
    spec = PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json"))
    deployed = Calibration(**json.loads(params.path(CALIBRATION).read_text())).scoring
    deployed = deployed._replace(precision=args.precision or deployed.precision)
    root = params.path(params.data.sites_root)
    if not root.is_dir() or not site_names(root):
        parser.error(f"no site in data.sites_root ({root}): nothing to measure")
    training = params.phantoms.spec.training_site
    sites = sorted(site_names(root), key=lambda name: name != training)  # the site that chooses first
    own = getattr(detector, "residual", "its own map")  # a detector that maps no residual keeps its map
    if args.residuals and own not in RESIDUALS:
        parser.error(f"{description['model_name']} maps no residual: --residuals does not apply")
    residuals = args.residuals or [own]
    passes = args.passes or [getattr(detector, "passes", 1)]
    report = {name: {residual: {count: site_windows(as_variant(detector, residual, count), root / name, spec, deployed,
                                                    params, args.windows, args.cubic) for count in passes}
                     for residual in residuals} for name in sites}
    chooser = report.get(training)
    chosen = None
    if chooser:
        residual, count, window = max(((r, p, w) for r in chooser for p in chooser[r] for w in args.windows),
                                      key=lambda rpw: chooser[rpw[0]][rpw[1]][rpw[2]]["dice"])
        chosen = {"residual": residual, "passes": count, "window": window}
    write_json(output, {"machine": machine(), "model": description["model_name"], "params": str(args.params),
                        "precision": deployed.precision,
                        "residuals": residuals, "passes": passes, "windows": args.windows,
                        "through_plane": "cubic" if args.cubic else "no more millimetres than in-plane",
                        "chosen_on": training if chooser else None, "chosen": chosen, "sites": report})
    windows = (f"window {w}: Dice / pixel AUPRC" for w in args.windows)
    table = Table("site", "residual", "passes", "slice AUROC", "healthy slices flagged", *windows,
                  title=f"{description['model_name']}: calibrated Dice [95 % interval] / pixel AUPRC (best Dice of one "
                        "threshold, a ceiling) by residual, restoration passes and median window")
    for name, by_residual in report.items():
        for residual, by_passes in by_residual.items():
            for count, rows in by_passes.items():
                flagged = rows[args.windows[0]]["healthy_slice_false_alarm_rate"]  # slice thresholds: any window's
                table.add_row(name, str(residual), str(count), f"{rows['slice_auroc']:.3f}", f"{flagged:.1%}", *(
                    f"{rows[w]['dice']:.3f} [{rows[w]['dice_ci95'][0]:.2f}, {rows[w]['dice_ci95'][1]:.2f}] / "
                    f"{rows[w]['pixel_auprc']:.3f} (ceiling {rows[w]['best_dice_oracle']:.3f})" for w in args.windows))
    Console().print(table)
    if chosen is not None:
        print(f"best calibrated Dice at the {training} site's held-out scans: residual {chosen['residual']}, "
              f"{chosen['passes']} passes, window {chosen['window']}")


if __name__ == "__main__":
    main()
