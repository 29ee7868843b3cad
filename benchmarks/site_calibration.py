"""How many healthy scans does a new site need for a stable threshold?

    python benchmarks/site_calibration.py [--draws 200] [--output benchmarks/results/site_calibration.json]

Runs after `make run`, on the pipeline's model and every site of ``data.sites_root``. Each
site's held-out healthy scans are scored once (through the model's recipe, as `brainomaly
calibrate` scores them); then, for each number n of calibration scans, ``--draws`` random sets
of n scans set the split-conformal slice and volume thresholds for
``calibrate.target_false_alarm_rate`` (as `calibrate` does; ``calibration_draws``, which the
`sites` stage reports at n = calibrate.healthy_scans), and the share of the *other*
healthy scans' slices, and of those scans, above them is the false-alarm rate the site would
see. Reported per site and n: the mean realised rate and its 5-95 % range over draws (slices),
the mean share of volumes flagged and the rate n scans guarantee for volumes, 1/(n+1). The
training site's own threshold (models/calibration.json) is shown for comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from components.atomic import write_json
from components.metrics.conformal import conformal_threshold
from components.models.calibration import Calibration
from pipelines.evaluate import CALIBRATION, load_trained
from pipelines.params import load_params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.sites import calibration_draws, score_subjects, site_names, site_subjects
from components.preprocess.spec import PreprocessSpec
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
COUNTS = (1, 2, 3, 5, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/site_calibration.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    detector, description = load_trained(params)
    spec = PreprocessSpec.from_json(params.path(PROCESSED_DIR / "preprocess_spec.json"))
    calibration = Calibration(**json.loads(params.path(CALIBRATION).read_text()))
    deployed = calibration.slice_threshold
    target = params.calibrate.target_false_alarm_rate
    results = {}
    for site in site_names(params.path(params.data.sites_root)):
        healthy, _ = site_subjects(params.path(params.data.sites_root) / site, params.data.modality)
        scored, _ = score_subjects(detector, healthy, spec, params.preprocess.workers, calibration.scoring)
        subjects, scores = scored["index"]["subject"].to_numpy(), scored["scores"]
        scans = len(set(subjects))
        results[site] = {
            "healthy_scans": scans,
            "deployed_threshold_false_alarm_rate": float((scores > deployed).mean()),
            "by_calibration_scans": {},
        }
        for count in (c for c in COUNTS if c < scans):
            draws = calibration_draws(scores, subjects, count, target, args.draws)
            slices, volumes = draws["healthy_slice_false_alarm_rate"], draws["healthy_volume_false_alarm_rate"]
            results[site]["by_calibration_scans"][count] = {
                "mean": slices["mean"], "p5": slices["p05"], "p95": slices["p95"], "volumes_flagged_mean": volumes["mean"],
                "volume_guarantee": conformal_threshold(np.arange(count, dtype=float), target).guaranteed_rate}
    report = {"model": description["model_name"], "target_false_alarm_rate": target, "draws": args.draws,
              "machine": machine(), "sites": results}
    write_json(args.output, report)
    table = Table(title=f"Healthy slices flagged on held-out scans (target {target:.0%}), by calibration scans")
    table.add_column("site")
    table.add_column("training threshold")
    for count in COUNTS:
        table.add_column(f"n={count}: mean [5-95 %]")
    for site, found in results.items():
        cells = [f"{found['deployed_threshold_false_alarm_rate']:.3f}"]
        for count in COUNTS:
            got = found["by_calibration_scans"].get(count)
            cells.append(f"{got['mean']:.3f} [{got['p5']:.3f}, {got['p95']:.3f}]; volumes {got['volumes_flagged_mean']:.2f} "
                         f"(<= {got['volume_guarantee']:.2f})" if got else "-")
        table.add_row(site, *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
