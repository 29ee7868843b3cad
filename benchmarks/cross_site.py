"""Every detector, both baselines and the default model across sites, against the targets.

    python benchmarks/cross_site.py [--only intensity denoising_ae ...] [--output benchmarks/results/cross_site.json]
    python benchmarks/cross_site.py --from-report   # the table of the rows reports/comparison.json holds
    python benchmarks/cross_site.py --rescore       # the trained models again, under today's evaluate settings

Runs `brainomaly compare` (each detector trained on the training site, evaluated, then scored on
every site's held-out scans at the deployed thresholds and after site calibration; see README
"Across sites"), then checks each detector, and the pipeline's own model as `make run` registers
it (``reports/sites.json``), on the unseen sites (every site but
``phantoms.training_site``) against the targets below, after calibration. Writes the JSON and
prints the table; reports/comparison.md holds the full tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from components.atomic import write_json
from pipelines import compare
from pipelines.params import load_params
from pipelines.sites import REPORT_JSON as SITES_JSON
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
TARGETS = {  # on the unseen sites, after calibrating with at most 10 healthy scans each
    "slice_auroc": (">=", 0.95),
    "pixel_auprc": (">=", 0.60),
    "dice_mean": (">=", 0.50),
    "slice_false_alarm_rate": ("<=", 0.05),
}


def site_values(site: dict) -> dict[str, float]:
    return {"slice_auroc": site["slice_auroc"], "pixel_auprc": site["pixel_auprc"],
            "dice_mean": site["calibrated"]["dice_mean"],
            "slice_false_alarm_rate": site["calibrated"]["slice_false_alarm_rate"],
            "deployed_slice_false_alarm_rate": site["deployed"]["slice_false_alarm_rate"]}


def meets(values: dict[str, float]) -> dict[str, bool]:
    return {k: (values[k] >= bound if op == ">=" else values[k] <= bound) for k, (op, bound) in TARGETS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="some of compare.detectors (default: all)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/cross_site.json")
    parser.add_argument("--from-report", action="store_true", help="train nothing: check the rows the report holds")
    parser.add_argument("--rescore", action="store_true", help="train nothing: evaluate the trained models again")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    if not args.from_report:
        compare.run(params, only=args.only, rescore=args.rescore)
    results = {name: row for name, row in json.loads(params.path(compare.REPORT_JSON).read_text()).items()
               if row.get("sites")}  # every detector compared on today's data
    served = params.path(SITES_JSON)  # and the pipeline's own model, as `make run` registers it
    if served.is_file():
        found = json.loads(served.read_text())
        results[f"{found['model']} as served"] = {"sites": found["sites"]}
    unseen = [s for s in next(iter(results.values()))["sites"] if s != params.phantoms.spec.training_site]
    report = {"machine": machine(), "training_site": params.phantoms.spec.training_site,
              "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}, "detectors": {}}
    for name, found in results.items():
        sites = {site: site_values(values) for site, values in found["sites"].items()}
        report["detectors"][name] = {
            "sites": sites, "ci95": {site: values["ci95"] for site, values in found["sites"].items()},
            "meets_targets_on_unseen_sites": all(all(meets(sites[s]).values()) for s in unseen),
            "train_seconds": found.get("train_seconds"),
        }
    write_json(args.output, report)
    table = Table(title="Unseen sites after calibration: slice AUROC / pixel AUPRC / Dice / tumour-free slices flagged "
                        "(before calibration)")
    table.add_column("detector")
    for site in unseen:
        table.add_column(site)
    table.add_column("targets")
    for name, found in report["detectors"].items():
        cells = [" / ".join(f"{v:.2f}" for v in list(found["sites"][s].values())[:4])
                 + f" ({found['sites'][s]['deployed_slice_false_alarm_rate']:.2f})" for s in unseen]
        table.add_row(name, *cells, "met" if found["meets_targets_on_unseen_sites"] else "missed")
    Console().print(table)


if __name__ == "__main__":
    main()
