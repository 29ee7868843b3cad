"""Run-to-run spread: the default recipe trained k times on the same data, seeds apart.

    python benchmarks/repeat_training.py [--runs 5] [--detector NAME] [-S section.key=value ...]
                                         [--label NAME] [--sites] [--baseline FILE]
                                         [--evaluate-only | --missing-only] [--output FILE]

Runs after `make run` (it needs the processed data). Each run is the ordinary `train` and
`evaluate` stages (Ray Train, MLflow) in its own workspace, artifacts/repeat/seed-<n>/, with
``train.seed`` = n and every other setting as in params.yaml. Per headline metric of the test
split it reports each run's value, the mean, the standard deviation and the range. The promotion
gate's margins (``register.margins`` in params.yaml) are two of these standard deviations: a
candidate must beat the champion by more than two trainings of one recipe differ.
``--detector NAME`` repeats another detector instead, at its compared budget (``compare.overrides``),
in artifacts/repeat/<name>/seed-<n>/, reported to repeat_training_<name>.json by default.
``-S section.key=value`` (repeatable) repeats a variant of the recipe; ``--label NAME`` names its
workspaces (artifacts/repeat/<label>/) and its report (repeat_training_<label>.json), which
records the ``train`` section the runs trained with.
``--sites`` also runs the `sites` stage on each model: each phantom site's slice AUROC, pixel
AUPRC, and Dice and healthy slices flagged after site calibration, with their spread.
``--baseline FILE`` (another report of this script, with the same seeds) adds the paired
differences, this recipe minus the baseline, seed by seed: their mean, range and how many favour
this recipe, so that a change is judged against trainings that differ only in it.
``--evaluate-only`` evaluates the models already trained there again (after a change to evaluate);
``--missing-only`` trains only the seeds whose workspace holds no model yet (after an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.machine import machine  # noqa: E402
from components.atomic import write_json  # noqa: E402
from pipelines.compare import detector_changes  # noqa: E402
from pipelines.evaluate import ALL_METRICS  # noqa: E402
from pipelines.params import ParamsError, load_params  # noqa: E402
from pipelines.sites import REPORT_JSON as SITES_JSON  # noqa: E402
from pipelines.train import MODEL_DIR  # noqa: E402
from pipelines.workspace import create, run_stage  # noqa: E402

WORKSPACES = Path("artifacts/repeat")
METRICS = ("slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "dice_mean", "best_dice_oracle",
           "slice_false_alarm_rate", "slice_sensitivity", "volume_false_alarm_rate", "volume_sensitivity")
# per site: ranking and maps as measured, Dice and false alarms at the site-calibrated thresholds
SITE_METRICS = {"slice_auroc": (), "pixel_auprc": (), "dice_mean": ("calibrated",),
                "healthy_slice_false_alarm_rate": ("calibrated",)}
# where a smaller value is the better one
LOWER_IS_BETTER = ("false_alarm_rate",)


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)), "min": float(array.min()),
            "max": float(array.max()), "range": float(np.ptp(array)), "two_std": float(2 * array.std(ddof=1))}


def site_metrics(folder: Path) -> dict[str, float]:
    """``site/metric`` -> value, from the workspace's reports/sites.json."""
    sites = json.loads((folder / SITES_JSON).read_text())["sites"]
    found = {}
    for site, report in sites.items():
        for key, path in SITE_METRICS.items():
            node = report
            for part in path:
                node = node[part]
            found[f"{site}/{key}"] = node[key]
    return found


def paired(runs: list[dict], baseline: dict, keys: list[str]) -> dict:
    """This recipe minus the baseline's, seed by seed, for the seeds and keys both hold."""
    theirs = {run["seed"]: run for run in baseline["runs"]}
    differences = {}
    for key in keys:
        pairs = [(run[key], theirs[run["seed"]][key]) for run in runs
                 if run["seed"] in theirs and key in theirs[run["seed"]] and key in run]
        if len(pairs) < 2:
            continue
        delta = np.asarray([mine - other for mine, other in pairs])
        better = delta < 0 if key.endswith(LOWER_IS_BETTER) else delta > 0
        differences[key] = {"seeds": len(pairs), "mean": float(delta.mean()), "min": float(delta.min()),
                            "max": float(delta.max()), "favour_this_recipe": int(better.sum())}
    return differences


def baseline_report(path: Path) -> dict | None:
    """Another report of this script, or None where ``path`` holds none."""
    try:
        report = json.loads(path.read_text())
        runs = report["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if isinstance(runs, list) and all(isinstance(r, dict) and "seed" in r for r in runs) else None


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the models trained earlier again")
    parser.add_argument("--missing-only", action="store_true", help="train only the seeds without a model yet")
    parser.add_argument("--detector", help="another detector than params.yaml's, at its compared budget")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a variant of the recipe (repeatable)")
    parser.add_argument("--label", help="names the variant's workspaces and report (default: the detector's name)")
    parser.add_argument("--sites", action="store_true", help="also measure each model at every phantom site")
    parser.add_argument("--baseline", type=Path, help="a report of this script to pair seed by seed with")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/repeat_training[_<label>].json")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: a spread needs two trainings")
    if args.overrides and not args.label:
        parser.error("-S needs --label: a variant's workspaces and report must not be the recipe's own")
    if args.baseline:  # read before hours of training, not after
        args.baseline_report = baseline_report(args.baseline)
        if args.baseline_report is None:
            parser.error(f"--baseline {args.baseline}: not a report of this script (a JSON with its runs' seeds)")
    try:
        args.params = load_params(REPO / "params.yaml", args.overrides)
    except ParamsError as err:
        parser.error(str(err))
    if args.detector and args.detector not in args.params.compare.detectors:
        parser.error(f"--detector {args.detector}: expected one of {', '.join(args.params.compare.detectors)}")
    args.label = args.label or args.detector
    return args


def main() -> None:
    args = arguments()
    params = args.params
    changes = detector_changes(params, args.detector) if args.detector else {"train": {}}
    output = args.output or REPO / f"benchmarks/results/repeat_training{'_' + args.label if args.label else ''}.json"
    workspaces = WORKSPACES / args.label if args.label else WORKSPACES
    runs, start = [], time.perf_counter()
    for seed in range(args.runs):
        folder = create(params, workspaces / f"seed-{seed}", changes | {"train": changes["train"] | {"seed": seed}})
        trained = (folder / MODEL_DIR / "weights.pt").is_file()
        seconds = None if args.evaluate_only or (args.missing_only and trained) else run_stage("train", folder, params)
        run_stage("evaluate", folder, params)
        metrics = json.loads((folder / ALL_METRICS).read_text())
        runs.append({"seed": seed, "train_seconds": seconds, **{key: metrics[key] for key in METRICS if key in metrics}})
        if args.sites:
            run_stage("sites", folder, params)
            runs[-1] |= site_metrics(folder)
        Console(stderr=True).print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in runs[-1].items()
                                                                if k not in ("seed", "train_seconds")))
    trained = load_params(folder / "params.yaml")
    keys = [key for key in runs[0] if key not in ("seed", "train_seconds") and all(key in run for run in runs)]
    report = {"machine": machine(), "detector": trained.model.name, "epochs": trained.train.epochs,
              "overrides": args.overrides, "train": trained.train.model_dump(mode="json"), "runs": runs, "wall_seconds": time.perf_counter() - start,
              "spread": {key: spread([run[key] for run in runs]) for key in keys}}
    if args.baseline:
        report["baseline"] = os.path.relpath(args.baseline.resolve(), REPO)
        report["paired"] = paired(runs, args.baseline_report, keys)
    write_json(output, report)
    print_report(report, args)


def print_report(report: dict, args: argparse.Namespace) -> None:
    variant = f" ({', '.join(args.overrides)})" if args.overrides else ""
    table = Table(title=f"{report['detector']}{variant}, trained {args.runs} times (seeds 0-{args.runs - 1}): "
                        "test split, and each site after calibration")
    columns = ("metric", "mean", "std", "min", "max", "2 x std")
    if "paired" in report:
        columns += ("minus baseline", "its range", "favour this")
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
    for key, found in report["spread"].items():
        row = [key, *(f"{found[k]:.3f}" for k in ("mean", "std", "min", "max", "two_std"))]
        if "paired" in report:
            difference = report["paired"].get(key)
            row += [f"{difference['mean']:+.3f}", f"{difference['min']:+.3f} to {difference['max']:+.3f}",
                    f"{difference['favour_this_recipe']} of {difference['seeds']}"] if difference else ["", "", ""]
        table.add_row(*row)
    Console(width=max(Console().width, 150)).print(table)


if __name__ == "__main__":
    main()
