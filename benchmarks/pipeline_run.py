"""Time `dvc repro` end to end on a fresh clone with the default params.

    python benchmarks/pipeline_run.py [--params params.yaml] [--output benchmarks/results/pipeline_run.json]

Clones the committed HEAD into a temporary folder (as a new user would get it), runs the whole
pipeline there, and records the wall time of each stage (from the CLI's "<stage> done in" line),
the total, and the evaluation metrics. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]


def run_pipeline(params: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "brainomaly"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        if params:
            shutil.copy(params, clone / "params.yaml")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.perf_counter()
        result = subprocess.run(["dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"dvc repro failed:\n{result.stderr[-3000:]}")
        log = result.stdout + result.stderr
        stages = {name: float(seconds) for name, seconds in re.findall(r"(\w+) done in ([\d.]+) s", log)}
        skipped = re.findall(r"Stage '(\w+)' didn't change, skipping", log)
        metrics = json.loads((clone / "reports" / "evaluation.json").read_text())  # every metric, not the headline
    return {"total_s": round(total, 1), "stages_s": stages, "skipped_up_to_date": skipped, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, help="params file to use instead of the committed one")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "pipeline_run.json")
    args = parser.parse_args()
    record = {
        "benchmark": "dvc repro, fresh clone, embedded phantom data",
        "machine": machine(),
        "params": str(args.params or "params.yaml (committed)"),
        **run_pipeline(args.params),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))

    table = Table(title=f"dvc repro on a {record['machine']}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in record["stages_s"].items():
        table.add_row(stage, f"{seconds:.1f}")
    for stage in record["skipped_up_to_date"]:
        table.add_row(stage, "up to date")
    table.add_row("[bold]total (incl. DVC)", f"[bold]{record['total_s']:.1f}")
    console = Console()
    console.print(table)
    console.print({k: round(v, 3) for k, v in record["metrics"].items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
