"""Do larger slices or longer training draw better maps? The default detector at 64 and 128 px.

    python benchmarks/slice_size.py [--sizes 64 128] [-S section.key=value ... --label NAME]
                                    [--output benchmarks/results/slice_size.json]

Runs after `make run` (it needs the raw phantoms and the sites' scans). Each size preprocesses
the project's data afresh in its own workspace (artifacts/slice_size/<px>/, or <px>-<label>/
for a variant; the project's params with ``preprocess.size`` set), then runs the ordinary
`train`, `evaluate` and `sites` stages there. Settings given in pixels keep their millimetres:
the denoising autoencoder's noise grid (8 at 64 px, the paper's 16 at 128 px) and the median
window (3 pixels at 64 px; at larger sizes the largest odd window no wider in mm: 5 at 128 px,
the paper's). Everything else, the seed included, is params.yaml's, or a variant's:
``-S train.epochs=50`` (repeatable) trains longer. Reported per size: each stage's seconds, the
network's milliseconds a slice, and at every site after calibration the slice AUROC, pixel
AUPRC, Dice and healthy slices flagged, with their 95 % intervals (the project's targets: Dice
>= 0.50, pixel AUPRC >= 0.60, slice AUROC >= 0.95, <= 5 % flagged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from components.atomic import write_json
from components.machine import machine
from pipelines.errors import StageError
from pipelines.evaluate import METRICS
from pipelines.params import ParamsError, load_params
from pipelines.sites import REPORT_JSON as SITES_JSON
from pipelines.workspace import create, run_stage

REPO = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "train", "evaluate", "sites")
BASE_SIZE = 64  # the size params.yaml's pixel settings are written for


def scaled(size: int, noise_resolution: int, pixel_median: int) -> dict:
    """The settings in pixels that keep their millimetres at ``size`` px."""
    factor = size / BASE_SIZE
    window = int(pixel_median * factor)
    return {"preprocess": {"size": size},
            "model": {"denoising_ae": {"noise_resolution": round(noise_resolution * factor)}},
            "evaluate": {"pixel_median": window if window % 2 else window - 1}}


def at_site(site: dict) -> dict:
    """A site's ranking and maps as measured, its Dice and false alarms after calibration."""
    calibrated = site["calibrated"]
    found = {"slice_auroc": site["slice_auroc"], "pixel_auprc": site["pixel_auprc"],
             "dice_mean": calibrated["dice_mean"],
             "healthy_slice_false_alarm_rate": calibrated["healthy_slice_false_alarm_rate"]}
    intervals = site["ci95"] | calibrated["ci95"]
    return found | {"ci95": {key: intervals[key] for key in found if key in intervals}}


def run_size(params, size: int, label: str | None) -> dict:
    changes = scaled(size, params.model.denoising_ae["noise_resolution"], params.evaluate.pixel_median)
    name = f"{size}-{label}" if label else str(size)
    folder = create(params, Path("artifacts/slice_size") / name, changes, linked=(Path("dvc.lock"),))
    seconds = {}
    for stage in STAGES:
        seconds[stage] = round(run_stage(stage, folder, params), 1)
        Console(stderr=True).print(f"{size} px: {stage} took {seconds[stage]:.0f} s")
    return {"settings": changes, "seconds": seconds, **measured(folder)}


def measured(folder: Path) -> dict:
    """A workspace's network time a slice (its `evaluate`) and every site's numbers (its `sites`)."""
    sites = json.loads((folder / SITES_JSON).read_text())["sites"]
    return {"inference_ms_per_slice": json.loads((folder / METRICS).read_text())["inference_ms_per_slice"],
            "sites": {name: at_site(site) for name, site in sites.items()}}


def print_table(report: dict) -> None:
    recipe = ", ".join(report.get("overrides", [])) or f"{report['epochs']} epochs"
    table = Table(title=f"The default detector by slice size, {recipe}, after site calibration: "
                        "slice AUROC / pixel AUPRC / Dice / healthy slices flagged")
    table.add_column("size")
    table.add_column("train, s", justify="right")
    table.add_column("ms a slice", justify="right")
    sites = list(next(iter(report["sizes"].values()))["sites"])
    for site in sites:
        table.add_column(site)
    for size, found in report["sizes"].items():
        cells = [f"{v['slice_auroc']:.2f} / {v['pixel_auprc']:.2f} / {v['dice_mean']:.2f} / "
                 f"{v['healthy_slice_false_alarm_rate']:.1%}" for v in found["sites"].values()]
        table.add_row(f"{size} px", f"{found['seconds']['train']:.0f}", f"{found['inference_ms_per_slice']:.1f}", *cells)
    Console(width=max(Console().width, 150)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a variant of the recipe (repeatable)")
    parser.add_argument("--label", help="names a variant's workspaces")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/slice_size.json")
    args = parser.parse_args()
    if args.overrides and not args.label:
        parser.error("-S needs --label: a variant's workspaces must not be the recipe's own")
    if any(size < BASE_SIZE or size % 16 for size in args.sizes):
        parser.error(f"--sizes: each at least {BASE_SIZE} px and a multiple of 16 (the U-Net's four poolings)")
    try:
        params = load_params(REPO / "params.yaml", args.overrides)
    except ParamsError as err:
        parser.error(str(err))
    if params.model.name != "denoising_ae":
        parser.error(f"it scales the denoising autoencoder's settings, and the recipe trains {params.model.name}")
    report = {"machine": machine(), "model": params.model.name, "epochs": params.train.epochs,
              "overrides": args.overrides, "sizes": {}}
    for size in args.sizes:
        report["sizes"][str(size)] = run_size(params, size, args.label)
        write_json(args.output, report)  # each size as it ends: a later failure keeps the earlier ones
    print_table(report)


if __name__ == "__main__":
    try:
        main()
    except StageError as err:  # a stage's own one-line reason, not a traceback
        raise SystemExit(f"slice_size: {err}") from None
