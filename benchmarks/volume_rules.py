"""Which volume verdict transfers: four rules, each at its own site-calibrated threshold.

    python benchmarks/volume_rules.py [--healthy-per-site 40] [--tumour-per-site 20]
                                      [--ixi ../shared/real-scans/ixi-t1] [--output benchmarks/results/volume_rules.json]

Runs after `make run`, on the registered champion. Writes fresh phantom scans of held-out
subjects at every site of params.yaml (``--healthy-per-site`` healthy, ``--tumour-per-site``
tumour; none of them seen in training), then per site does what `brainomaly calibrate` does with
its first ``calibrate.healthy_scans`` healthy scans: split-conformal slice and pixel thresholds,
and for each rule a conformal threshold on the calibration scans' volume scores, all at
``calibrate.target_false_alarm_rate``. On the other healthy scans and the tumour scans it reports,
per rule: volume AUROC (95 % bootstrap interval over volumes), healthy volumes flagged and tumour
volumes caught (each with its exact binomial interval); and per site the tumour-free slices
flagged. The guarantee is an average over calibration sets, so the same is repeated for
``--draws`` random sets of calibration scans (mean and 5-95 % range). With ``--ixi``, real healthy
IXI T1 scans are a site too (healthy only: volumes flagged).

Rules: ``max`` (the served one), ``third_highest`` slice, ``slices_above`` the slice threshold,
``largest_component`` of the thresholded pixel map (mL).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from itertools import repeat
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.volume_verdicts import load_champion  # noqa: E402
from components.data.layouts import read_dataset  # noqa: E402
from components.data.phantoms import generate_phantoms  # noqa: E402
from components.metrics.conformal import conformal_threshold, exact_interval  # noqa: E402
from components.metrics.detection import slice_truth  # noqa: E402
from components.models.inference import score_slices, with_reference  # noqa: E402
from components.scoring.predictor import smoothed_maps  # noqa: E402
from components.scoring.volume import kth_highest, largest_component, slices_above, volume_score  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.sites import _preprocess, site_subjects  # noqa: E402

RULES = ("max", "third_highest", "slices_above", "largest_component")


def scored_scans(predictor, subjects, workers: int, min_tumour_pixels: int) -> list[dict]:
    """Per scan: slice scores, tumour-slice and tumour-free flags, post-processed maps, brain, mL per model voxel."""
    calibration, spec = predictor.bundle.calibration, predictor.bundle.preprocess
    scans = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for subject, slices in zip(subjects, pool.map(_preprocess, subjects, repeat(spec))):
            if isinstance(slices, str):
                print(f"skipping {subject.subject_id}: {slices}")
                continue
            scored = with_reference(score_slices(predictor.detector, slices.images, slices.brain,
                                                 precision=calibration.precision), calibration.score_reference)
            native_ml = float(np.prod(nib.load(subject.image).header.get_zooms()[:3])) / 1000.0
            lesions = slices.lesion_pixels if slices.lesion_pixels is not None else np.zeros_like(slices.tumour_pixels)
            abnormal, _ = slice_truth(slices.tumour_pixels, lesions, min_tumour_pixels)
            scans.append({"scores": scored.scores, "abnormal": abnormal,
                          "tumour_free": (slices.tumour_pixels == 0) & (lesions == 0),
                          "smoothed": smoothed_maps(scored, slices, calibration), "brain": slices.brain,
                          "ml_per_voxel": native_ml * slices.brain_pixels.sum() / max(int(slices.brain.sum()), 1)})
    return scans


def rule_scores(scans: list[dict], slice_threshold: float, pixel_threshold: float) -> dict[str, np.ndarray]:
    return {
        "max": np.array([volume_score(s["scores"]) for s in scans]),
        "third_highest": np.array([kth_highest(s["scores"], 3) for s in scans]),
        "slices_above": np.array([slices_above(s["scores"], slice_threshold) for s in scans]),
        "largest_component": np.array([largest_component(s["smoothed"], s["brain"], pixel_threshold) * s["ml_per_voxel"]
                                       for s in scans]),
    }


def rate(flagged: np.ndarray) -> dict:
    low, high = exact_interval(int(flagged.sum()), len(flagged))
    return {"flagged": int(flagged.sum()), "of": len(flagged), "rate": float(flagged.mean()) if len(flagged) else None,
            "exact95": [round(low, 4), round(high, 4)]}


def auroc_interval(healthy: np.ndarray, tumour: np.ndarray, samples: int = 1000, seed: int = 0) -> dict:
    labels = np.r_[np.zeros(len(healthy)), np.ones(len(tumour))]
    value = float(roc_auc_score(labels, np.r_[healthy, tumour]))
    rng = np.random.default_rng(seed)
    draws = [roc_auc_score(labels, np.r_[rng.choice(healthy, len(healthy)), rng.choice(tumour, len(tumour))])
             for _ in range(samples)]
    return {"value": round(value, 4), "ci95": [round(float(np.quantile(draws, 0.025)), 4),
                                               round(float(np.quantile(draws, 0.975)), 4)]}


def at_split(reference: list[dict], healthy_test: list[dict], tumour_test: list[dict], target: float,
             pixel_target: float, ranking: bool = True) -> dict:
    """A site calibrated on ``reference`` as `calibrate` does, measured on the other scans
    (``ranking``: with each rule's volume AUROC and its bootstrap interval)."""
    slice_cut = conformal_threshold(np.concatenate([s["scores"] for s in reference]), target)
    pixel_cut = conformal_threshold(np.concatenate([s["smoothed"][s["brain"]] for s in reference]), pixel_target)
    at = {name: rule_scores(scans, slice_cut.threshold, pixel_cut.threshold)
          for name, scans in (("reference", reference), ("healthy", healthy_test), ("tumour", tumour_test))}
    tumour_free = np.concatenate([s["scores"][s["tumour_free"]] for s in healthy_test + tumour_test]) > slice_cut.threshold
    tumour_slices = np.concatenate([s["scores"][s["abnormal"]] for s in tumour_test]) if tumour_test else np.zeros(0)
    rules = {}
    for rule in RULES:
        cut = conformal_threshold(at["reference"][rule], target)
        rules[rule] = {"threshold": cut.threshold, "guaranteed_rate": round(cut.guaranteed_rate, 4),
                       "healthy_volumes_flagged": rate(at["healthy"][rule] > cut.threshold)}
        if tumour_test:
            rules[rule]["tumour_volumes_caught"] = rate(at["tumour"][rule] > cut.threshold)
        if tumour_test and ranking:
            rules[rule]["volume_auroc"] = auroc_interval(at["healthy"][rule], at["tumour"][rule])
    return {"tumour_free_slices_flagged": rate(tumour_free),
            "tumour_slices_caught": rate(tumour_slices > slice_cut.threshold) if len(tumour_slices) else None,
            "rules": rules}


def over_draws(healthy: list[dict], tumour: list[dict], count: int, draws: int, target: float, pixel_target: float) -> dict:
    """What the guarantee is about: the rates averaged over ``draws`` random sets of ``count``
    calibration scans (mean and 5-95 % of draws), each tested on the other healthy scans."""
    rng, found = np.random.default_rng(0), []
    for _ in range(draws):
        chosen = set(rng.choice(len(healthy), size=count, replace=False).tolist())
        split = at_split([healthy[i] for i in sorted(chosen)], [s for i, s in enumerate(healthy) if i not in chosen],
                         tumour, target, pixel_target, ranking=False)
        found.append({"tumour_free_slices_flagged": split["tumour_free_slices_flagged"]["rate"],
                      **{f"{rule}.{key}": split["rules"][rule][key]["rate"] for rule in RULES
                         for key in ("healthy_volumes_flagged", "tumour_volumes_caught") if key in split["rules"][rule]}})
    return {key: {"mean": round(float(np.mean([f[key] for f in found])), 4),
                  "p5": round(float(np.quantile([f[key] for f in found], 0.05)), 4),
                  "p95": round(float(np.quantile([f[key] for f in found], 0.95)), 4)} for key in found[0]}


def measure_site(predictor, healthy, tumour, params, workers: int, draws: int) -> dict:
    """The first ``calibrate.healthy_scans`` healthy scans by id calibrate (as the `sites` stage
    splits), the rest test; then the same over random calibration sets."""
    count, target = params.calibrate.healthy_scans, params.calibrate.target_false_alarm_rate
    pixel_target = 1.0 - params.evaluate.pixel_threshold_percentile / 100.0
    least = params.evaluate.min_tumour_pixels  # the one slice label
    healthy_scans, tumour_scans = (scored_scans(predictor, scans, workers, least) for scans in (healthy, tumour))
    split = at_split(healthy_scans[:count], healthy_scans[count:], tumour_scans, target, pixel_target)
    return {"scans": {"calibration": count, "healthy_test": len(healthy_scans) - count, "tumour_test": len(tumour_scans)},
            **split, "random_calibration_sets": {"draws": draws, **over_draws(healthy_scans, tumour_scans, count, draws,
                                                                             target, pixel_target)}}


def chosen_rule(sites: dict, unseen: list[str]) -> dict:
    """The rule to keep: the highest mean volume AUROC at the unseen sites, and whether, averaged
    over random calibration sets, it flags <= 10 % of healthy volumes and catches >= 90 % of
    tumour volumes at every one of them."""
    table = {}
    for rule in RULES:
        drawn = [sites[s]["random_calibration_sets"] for s in unseen]
        table[rule] = {"meets_targets": all(d[f"{rule}.healthy_volumes_flagged"]["mean"] <= 0.10
                                            and d[f"{rule}.tumour_volumes_caught"]["mean"] >= 0.90 for d in drawn),
                       "mean_volume_auroc": round(float(np.mean([sites[s]["rules"][rule]["volume_auroc"]["value"]
                                                                 for s in unseen])), 4)}
    best = max(RULES, key=lambda r: (table[r]["meets_targets"], table[r]["mean_volume_auroc"]))
    return {"by_rule": table, "kept": best}


def print_table(report: dict) -> None:
    table = Table(title=f"Volume verdicts per site, calibrated with {report['calibration_scans']} healthy scans "
                        f"(target {report['target_false_alarm_rate']:.0%}): the first by id | mean over random sets")
    for column in ("site", "rule", "volume AUROC", "healthy flagged", "tumours caught", "healthy | tumours, random sets"):
        table.add_column(column)
    for site, found in report["sites"].items():
        drawn = found["random_calibration_sets"]
        for rule, r in found["rules"].items():
            flagged, caught = r["healthy_volumes_flagged"], r.get("tumour_volumes_caught")
            mean_caught = drawn.get(f"{rule}.tumour_volumes_caught", {}).get("mean")
            table.add_row(site, rule, f"{r['volume_auroc']['value']:.2f} {r['volume_auroc']['ci95']}" if caught else "-",
                          f"{flagged['flagged']}/{flagged['of']} {flagged['exact95']}",
                          f"{caught['flagged']}/{caught['of']} {caught['exact95']}" if caught else "-",
                          f"{drawn[f'{rule}.healthy_volumes_flagged']['mean']:.3f} | "
                          + (f"{mean_caught:.3f}" if mean_caught is not None else "-"))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--healthy-per-site", type=int, default=40)
    parser.add_argument("--tumour-per-site", type=int, default=20)
    parser.add_argument("--ixi", type=Path, default=None, help="a folder of healthy IXI T1 scans (ixi layout)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100, help="random calibration sets per site")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "volume_rules.json")
    args = parser.parse_args()
    params = load_params(args.params)
    predictor = load_champion(params)
    start = time.perf_counter()
    report = {"model": f"{predictor.model_name} v{predictor.model_version} ({predictor.bundle.model_name})",
              "calibration_scans": params.calibrate.healthy_scans,
              "target_false_alarm_rate": params.calibrate.target_false_alarm_rate, "sites": {}}
    with tempfile.TemporaryDirectory() as tmp:
        spec = replace(params.phantoms.spec, n_healthy=1, n_tumour=1, test_healthy=args.healthy_per_site,
                       test_tumour=args.tumour_per_site)
        generate_phantoms(Path(tmp) / "hcp", Path(tmp) / "brats", spec, workers=args.workers, sites_root=Path(tmp) / "sites")
        for site in sorted(spec.sites):
            healthy, tumour = site_subjects(Path(tmp) / "sites" / site, params.data.modality)
            report["sites"][site] = measure_site(predictor, healthy, tumour, params, args.workers, args.draws)
            print(f"{site}: done at {time.perf_counter() - start:.0f} s")
    unseen = [s for s in report["sites"] if s != params.phantoms.spec.training_site]
    report["choice"] = chosen_rule(report["sites"], unseen)
    if args.ixi:
        healthy = sorted(read_dataset(args.ixi, "auto", "t1", "healthy"), key=lambda s: s.subject_id)
        report["sites"]["ixi_t1"] = measure_site(predictor, healthy, [], params, args.workers, args.draws)
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"kept: {report['choice']['kept']}; wrote {args.output}")


if __name__ == "__main__":
    main()
