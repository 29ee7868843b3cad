"""Train and evaluate every detector on the default phantoms and record the comparison.

    python benchmarks/detector_comparison.py [--from-report] [--output benchmarks/results/detector_comparison.json]

Runs `brainomaly compare` with the committed params (after `make run`, which leaves the
processed phantoms in data/processed), then records reports/comparison.json with the machine
and the wall time, and prints the main columns. ``--from-report`` records the report of an
earlier `brainomaly compare` instead of running it again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "comparison.json"
COLUMNS = {"slice AUROC": "slice_auroc", "CV AUROC T=20": "cv_auroc_mean_t20", "CV F1 T=20": "cv_f1_mean_t20",
           "pixel AUROC": "pixel_auroc", "rectified AUROC": "rectified_auroc_mean", "Dice": "dice_mean",
           "best Dice (oracle)": "best_dice_oracle",
           "train slices/s": "train_slices_per_s", "ms/slice": "inference_ms_per_slice"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-report", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "detector_comparison.json")
    args = parser.parse_args()
    seconds = None
    if not args.from_report:
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "brainomaly"), "compare"], cwd=REPO, check=True)
        seconds = round(time.perf_counter() - start)
    results = json.loads(REPORT.read_text())
    record = {"benchmark": "brainomaly compare: every detector trained (Ray Train, 2 workers) and evaluated on the default phantoms",
              "machine": machine(), "wall_seconds": seconds,
              "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    table = Table(title=record["benchmark"])
    table.add_column("detector")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics[k]:.3f}" if isinstance(metrics.get(k), float) else "-" for k in COLUMNS.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
