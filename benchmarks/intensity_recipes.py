"""Which intensity recipe transfers best across sites?

    python benchmarks/intensity_recipes.py [--model intensity] [--recipes percentile zscore ...]
                                           [--output benchmarks/results/intensity_recipes_<model>.json]

Each recipe preprocesses the project's data afresh in its own workspace
(artifacts/recipes/<model>/<recipe>/, the project's params with the recipe's steps and
``model.name`` set), then runs the ordinary `train`, `evaluate` and `sites` stages there: the
model learns on the training site in that recipe and meets every other site's scans through it.
Reported per recipe and site: slice AUROC, pixel AUPRC, and the share of tumour-free slices
flagged at the deployed threshold (what a site sees before calibrating) and after calibrating on
``calibrate.healthy_scans`` healthy scans, each with its 95 % interval over subjects.

The default ``--model intensity`` needs no training: its deployed false alarms on another site
measure how well the recipe alone puts that site on the training site's scale, in minutes.
``--model spatial_vae`` measures the learned default (about 12 minutes a recipe on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from components.atomic import write_json
from pipelines.params import load_params
from pipelines.sites import REPORT_JSON as SITES_JSON
from pipelines.workspace import create, run_stage
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # docs/preprocessing.md "Preprocessing": the four ways to put scans on one intensity scale
    "percentile": {"normalisation": "percentile", "histogram_reference": "none"},
    "zscore": {"normalisation": "zscore", "histogram_reference": "none"},
    "histogram_healthy": {"normalisation": "percentile", "histogram_reference": "healthy"},
    "standard": {"normalisation": "percentile", "histogram_reference": "standard"},
}
STAGES = ("preprocess", "train", "evaluate", "sites")


def site_row(site: dict) -> dict:
    deployed, calibrated = site["deployed"], site["calibrated"]
    return {"slice_auroc": site["slice_auroc"], "pixel_auprc": site["pixel_auprc"],
            "false_alarms_deployed": deployed["slice_false_alarm_rate"],
            "false_alarms_calibrated": calibrated["slice_false_alarm_rate"],
            "ci95": {"slice_auroc": site["ci95"].get("slice_auroc"),
                     "false_alarms_deployed": deployed["ci95"].get("slice_false_alarm_rate"),
                     "false_alarms_calibrated": calibrated["ci95"].get("slice_false_alarm_rate")}}


def run_recipe(params, model: str, recipe: str) -> dict:
    folder = create(params, Path("artifacts/recipes") / model / recipe,
                    {"model": {"name": model}, "preprocess": RECIPES[recipe]}, linked=(Path("dvc.lock"),))
    seconds = {stage: round(run_stage(stage, folder, params), 1) for stage in STAGES}
    sites = json.loads((folder / SITES_JSON).read_text())["sites"]
    return {"seconds": seconds, "sites": {name: site_row(values) for name, values in sites.items()}}


def print_table(report: dict) -> None:
    recipes = report["recipes"]
    sites = list(next(iter(recipes.values()))["sites"])
    table = Table(title=f"{report['model']}: slice AUROC / tumour-free slices flagged at the deployed threshold "
                        "(after site calibration)")
    table.add_column("recipe")
    for site in sites:
        table.add_column(site)
    for recipe, found in recipes.items():
        cells = [f"{v['slice_auroc']:.2f} / {v['false_alarms_deployed']:.1%} ({v['false_alarms_calibrated']:.1%})"
                 for v in found["sites"].values()]
        table.add_row(recipe, *cells)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="intensity")
    parser.add_argument("--recipes", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    report = {"machine": machine(), "model": args.model, "training_site": params.phantoms.spec.training_site,
              "recipes": {recipe: run_recipe(params, args.model, recipe) for recipe in args.recipes}}
    write_json(args.output or REPO / f"benchmarks/results/intensity_recipes_{args.model}.json", report)
    print_table(report)


if __name__ == "__main__":
    main()
