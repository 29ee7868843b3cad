"""Sweep efficiency on this machine: trials per hour with ASHA early stopping and without.

    python benchmarks/sweep_efficiency.py [--samples 6] [--epochs 6] [--output benchmarks/results/sweep_efficiency.json]

Runs `brainomaly tune` twice in scratch workspaces (artifacts/bench-sweep-*/: the project's
params with the processed data linked) with the same space, seed and trial budget: once with
tune.scheduler asha, once with none. Reported: wall time, trials per hour, epochs trained in all
and the best val_slice_auroc found. The registration step of each sweep is part of the time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines import tune
from pipelines.params import load_params
from pipelines.workspace import create
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]


def sweep(scheduler: str, samples: int, epochs: int) -> dict:
    params = load_params(REPO / "params.yaml")
    folder = REPO / "artifacts" / f"bench-sweep-{scheduler}"
    shutil.rmtree(folder, ignore_errors=True)
    create(params, folder, {"tune": {"scheduler": scheduler, "num_samples": samples, "epochs": epochs}})
    start = time.perf_counter()
    summary = tune.run(load_params(folder / "params.yaml"))
    seconds = time.perf_counter() - start
    trials = json.loads((folder / "reports" / "tune.json").read_text())["trials"]
    return {"scheduler": scheduler, "trials": len(trials), "epochs_trained": int(sum(t["epochs"] or 0 for t in trials)),
            "wall_s": round(seconds, 1), "trials_per_hour": round(3600 * len(trials) / seconds, 1),
            "best_val_slice_auroc": summary["best"]["val_slice_auroc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "sweep_efficiency.json")
    args = parser.parse_args()
    runs = [sweep(scheduler, args.samples, args.epochs) for scheduler in ("asha", "none")]
    record = {"benchmark": f"brainomaly tune, {args.samples} trials of up to {args.epochs} epochs, default detector",
              "machine": machine(), "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    table = Table(title=record["benchmark"])
    for column in ("scheduler", "trials", "epochs trained", "wall s", "trials/hour", "best val AUROC"):
        table.add_column(column, justify="left" if column == "scheduler" else "right")
    for r in runs:
        table.add_row(r["scheduler"], str(r["trials"]), str(r["epochs_trained"]), f"{r['wall_s']:.0f}",
                      f"{r['trials_per_hour']:.1f}", f"{r['best_val_slice_auroc']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
