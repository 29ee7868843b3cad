"""Which slice score transfers across sites: candidates read off the same anomaly maps.

    python benchmarks/slice_scores.py [--params params.yaml] [--output benchmarks/results/slice_scores_<model>.json]

Runs after `make run` (or on a `brainomaly compare` workspace: ``--params
artifacts/compare/<name>/params.yaml``). The trained model scores every site's held-out scans
once, through its recipe as the `sites` stage does; each candidate slice score is then read off
the same maps. Per candidate and site: slice AUROC with its 95 % interval over subjects, and the
tumour-free slices flagged at two thresholds, each at the candidate's own scores:

- ``deployed``: ``evaluate.threshold_percentile`` of the training site's healthy validation
  slices (how the model's deployed threshold is set), so it measures whether a threshold travels;
- ``calibrated``: ``calibrate.target_false_alarm_rate`` of the site's own calibration scans.

Candidates: the default focal score (brightest 2 % of the 5 x 5 median-filtered map inside the
eroded brain), the map's mean over the brain, the mean positive residual (brighter than the
reconstruction; autoencoders only), the focal score without the median filter, without the rim
erosion, with the brightest 5 %, and the filtered map's maximum; and the focal score divided by
the median focal score of the scan's slices (the scan as its own reference: a site's global
gain on the maps cancels, at the price of a scan whose tumour spans most of its slices). Two
references a tumour barely moves: the focal score over the median of the slice's own map inside
the brain (how far its brightest part stands above its typical residual), and over the median of
those slice medians across the scan. Each candidate also reports the tumour slices it catches
(sensitivity) at both thresholds: a reference that silences false alarms may silence tumours too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from components.atomic import write_json
from components.data.slice_store import read_index
from components.metrics.detection import slice_truth
from components.metrics.operating_point import metric_frames, with_intervals
from components.models.detector import MAP_MEDIAN, Inspection, focal_score, mean_in_brain
from components.models.inference import relative_to_level, relative_to_scan
from components.models.median import median_filter
from components.preprocess.spec import PreprocessSpec
from pipelines.evaluate import load_trained, score_split
from pipelines.params import load_params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.sites import score_subjects, site_names, site_subjects
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
TOP = 0.02
SCAN_RELATIVE = "focal / the scan's median"
SLICE_LEVEL = "focal / the slice's map median"
SCAN_LEVEL = "focal / the scan's map median"
MAP_LEVEL = "brain map median"  # not a candidate: the residual level the two above divide by


def top_in_brain(maps: torch.Tensor, brain: torch.Tensor, fraction: float) -> torch.Tensor:
    """The focal score's top-fraction mean over the whole brain mask, rim included."""
    flat = median_filter(maps, MAP_MEDIAN).flatten(1).masked_fill(~brain.flatten(1), float("-inf"))
    count = int(max(1, np.ceil(brain.flatten(1).sum(1).max().item() * fraction)))
    values = flat.topk(count, dim=1).values
    kept = torch.arange(count)[None] < (brain.flatten(1).sum(1) * fraction).ceil().clamp(min=1)[:, None]
    return torch.where(kept, values, torch.zeros_like(values)).sum(1) / kept.sum(1)


class Candidates(torch.nn.Module):
    """The detector, answering with its maps and every candidate slice score as an alternative."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    @property
    def device(self) -> torch.device:
        return self.detector.device

    def inspect(self, x: torch.Tensor, brain: torch.Tensor) -> Inspection:
        found = self.detector.inspect(x, brain)
        maps = found.maps
        with torch.no_grad():
            scores = {
                "focal (default)": focal_score(maps, brain, TOP),
                "map_mean": mean_in_brain(maps, brain),
                "focal, no median filter": focal_score(maps, brain, TOP, median=1),
                "focal, rim kept": top_in_brain(maps, brain, TOP),
                "focal, top 5 %": focal_score(maps, brain, 0.05),
                "filtered maximum": focal_score(maps, brain, 0.0),
                MAP_LEVEL: self.detector.map_level(maps, brain),
            }
            if hasattr(self.detector, "reconstruct") and self.detector.trainable:
                scores["mean positive residual"] = mean_in_brain((x - self.detector.reconstruct(x)).clamp(min=0), brain)
        return Inspection(maps, found.scores, scores)

    def map_level(self, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return self.detector.map_level(maps, brain)


def with_references(scored: dict) -> dict:
    """``scored`` with the focal score relative to its scan's and its slice's residual levels as
    more candidates (the level itself dropped)."""
    found = dict(scored["alternatives"])
    focal, level, scans = found["focal (default)"], found.pop(MAP_LEVEL), scored["index"]["subject"].to_numpy()
    scan_level = pd.Series(level).groupby(scans).transform("median").to_numpy()
    found.update({SCAN_RELATIVE: relative_to_scan(focal, scans), SLICE_LEVEL: relative_to_level(focal, level),
                  SCAN_LEVEL: relative_to_level(focal, scan_level)})
    return {**scored, "alternatives": found}


def candidate_metrics(test: dict, name: str, thresholds: dict[str, float], params) -> dict:
    index, settings = test["index"], params.evaluate
    labels, rated = slice_truth(index["tumour_pixels"], index["lesion_pixels"], settings.min_tumour_pixels)
    slices, subjects = metric_frames(index, test["alternatives"][name], labels, rated, {})
    found = {}
    for kind, threshold in thresholds.items():
        got = with_intervals(slices, subjects, threshold, np.inf, settings.bootstrap_samples, ranking=kind == "deployed")
        if kind == "deployed":
            found["slice_auroc"], found["slice_auroc_ci95"] = got["slice_auroc"], got["ci95"]["slice_auroc"]
        found[f"{kind}_false_alarm_rate"] = got["slice_false_alarm_rate"]
        found[f"{kind}_false_alarm_ci95"] = got["ci95"]["slice_false_alarm_rate"]
        found[f"{kind}_sensitivity"] = got["slice_sensitivity"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    params = load_params(args.params)
    detector, description = load_trained(params)
    model = Candidates(detector)
    spec = PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json"))
    index = read_index(params.path(PROCESSED_DIR))
    val = with_references(score_split(model, params.path(PROCESSED_DIR),
                                         index[(index["cohort"] == "healthy") & (index["split"] == "val")]))
    deployed = {name: float(np.percentile(v, params.evaluate.threshold_percentile)) for name, v in val["alternatives"].items()}
    target, count = params.calibrate.target_false_alarm_rate, params.calibrate.healthy_scans
    root = params.path(params.data.sites_root)
    results = {}
    for site in site_names(root):
        healthy, tumour = site_subjects(root / site, params.data.modality)
        reference, test = (with_references(score_subjects(model, scans, spec, params.preprocess.workers)[0])
                           for scans in (healthy[:count], healthy[count:] + tumour))
        results[site] = {name: candidate_metrics(test, name, {
            "deployed": deployed[name],
            "calibrated": float(np.percentile(reference["alternatives"][name], 100 * (1 - target)))}, params)
            for name in deployed}
    model_name = description["model_name"]
    output = args.output or REPO / f"benchmarks/results/slice_scores_{model_name}.json"
    write_json(output, {"model": model_name, "machine": machine(), "target_false_alarm_rate": target,
                        "deployed_percentile": params.evaluate.threshold_percentile, "sites": results})
    table = Table(title=f"{model_name}: slice AUROC [95 % CI] / tumour-free slices flagged, deployed -> calibrated"
                        " / tumour slices caught, deployed -> calibrated")
    table.add_column("slice score")
    for site in results:
        table.add_column(site)
    for name in deployed:
        table.add_row(name, *(f"{r[name]['slice_auroc']:.3f} [{r[name]['slice_auroc_ci95']['low']:.2f}, "
                              f"{r[name]['slice_auroc_ci95']['high']:.2f}] / {r[name]['deployed_false_alarm_rate']:.1%}"
                              f" -> {r[name]['calibrated_false_alarm_rate']:.1%} / {r[name]['deployed_sensitivity']:.0%}"
                              f" -> {r[name]['calibrated_sensitivity']:.0%}" for r in results.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
