"""Run-to-run spread: the default recipe trained k times on the same data, seeds apart.

    python benchmarks/repeat_training.py [--runs 5] [--detector NAME] [--evaluate-only | --missing-only]
                                         [--output benchmarks/results/repeat_training.json]

Runs after `make run` (it needs the processed data). Each run is the ordinary `train` and
`evaluate` stages (Ray Train, MLflow) in its own workspace, artifacts/repeat/seed-<n>/, with
``train.seed`` = n and every other setting as in params.yaml. Per headline metric of the test
split it reports each run's value, the mean, the standard deviation and the range. The promotion
gate's margins (``register.margins`` in params.yaml) are two of these standard deviations: a
candidate must beat the champion by more than two trainings of one recipe differ.
``--detector NAME`` repeats another detector instead, at its compared budget (``compare.overrides``),
in artifacts/repeat/<name>/seed-<n>/, reported to repeat_training_<name>.json by default.
``--evaluate-only`` evaluates the models already trained there again (after a change to evaluate);
``--missing-only`` trains only the seeds whose workspace holds no model yet (after an interruption).
"""

from __future__ import annotations

import argparse
import json
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
from pipelines.params import load_params  # noqa: E402
from pipelines.train import MODEL_DIR  # noqa: E402
from pipelines.workspace import create, run_stage  # noqa: E402

WORKSPACES = Path("artifacts/repeat")
METRICS = ("slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "dice_mean", "best_dice_oracle",
           "slice_false_alarm_rate", "slice_sensitivity", "volume_false_alarm_rate", "volume_sensitivity")


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)), "min": float(array.min()),
            "max": float(array.max()), "range": float(np.ptp(array)), "two_std": float(2 * array.std(ddof=1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the models trained earlier again")
    parser.add_argument("--missing-only", action="store_true", help="train only the seeds without a model yet")
    parser.add_argument("--detector", help="another detector than params.yaml's, at its compared budget")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/repeat_training[_<detector>].json")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: a spread needs two trainings")
    params = load_params(REPO / "params.yaml")
    if args.detector and args.detector not in params.compare.detectors:
        parser.error(f"--detector {args.detector}: expected one of {', '.join(params.compare.detectors)}")
    changes = detector_changes(params, args.detector) if args.detector else {"train": {}}
    output = args.output or REPO / f"benchmarks/results/repeat_training{'_' + args.detector if args.detector else ''}.json"
    workspaces = WORKSPACES / args.detector if args.detector else WORKSPACES
    runs, start = [], time.perf_counter()
    for seed in range(args.runs):
        folder = create(params, workspaces / f"seed-{seed}", changes | {"train": changes["train"] | {"seed": seed}})
        trained = (folder / MODEL_DIR / "weights.pt").is_file()
        seconds = None if args.evaluate_only or (args.missing_only and trained) else run_stage("train", folder, params)
        run_stage("evaluate", folder, params)
        metrics = json.loads((folder / ALL_METRICS).read_text())
        runs.append({"seed": seed, "train_seconds": seconds, **{key: metrics[key] for key in METRICS if key in metrics}})
        Console(stderr=True).print(f"seed {seed}: " + ", ".join(f"{k} {runs[-1][k]:.3f}" for k in METRICS if k in runs[-1]))
    trained = load_params(folder / "params.yaml")
    report = {"machine": machine(), "detector": trained.model.name, "epochs": trained.train.epochs,
              "runs": runs, "wall_seconds": time.perf_counter() - start,
              "spread": {key: spread([run[key] for run in runs]) for key in METRICS if all(key in run for run in runs)}}
    write_json(output, report)
    table = Table(title=f"{trained.model.name}, trained {args.runs} times (seeds 0-{args.runs - 1}), test split")
    for column in ("metric", "mean", "std", "min", "max", "2 x std"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, found in report["spread"].items():
        table.add_row(key, *(f"{found[k]:.3f}" for k in ("mean", "std", "min", "max", "two_std")))
    Console().print(table)


if __name__ == "__main__":
    main()
