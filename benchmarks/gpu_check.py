"""The GPU path, checked and timed on the device it is given: the gpu-marked tests, then every
detector's training throughput and inference time, fp32 against bf16, by slice size and batch.

    python benchmarks/gpu_check.py [--sizes 64 128] [--batches 64 256] [--budget-s 420]
                                   [--output benchmarks/results/gpu_check.json]

Needs PyTorch, numpy, scipy, scikit-learn, pandas, rich, pytest and the small wheels of
pydantic, PyYAML, nibabel and isal; not Ray, MLflow or DVC, so it runs on a bare GPU machine:

    pip download -d wheels pytest pydantic pyyaml nibabel isal   # where a package index is reachable
    pip install --no-index --find-links wheels pytest pydantic pyyaml nibabel isal   # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_check.py                  # there, without the project installed

Detectors are built as `brainomaly compare` builds them (benchmarks/detector_speed.py); bf16 runs
with channels_last, the recommended GPU recipe. Targets: the default detector (params.yaml's
model) infers in <= 1.2 ms a slice at 128 px, and every detector trains at least 20x faster than
on the 2-core CPU machine (benchmarks/results/detector_speed_cpu.json, 64 px). Timings stop at
``--budget-s``, the rest listed as not measured, so a run fits the time it was given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from detector_speed import compare_hyperparams, machine_name, measure  # benchmarks/, this script's folder

from pipelines.params import load_params

REPO = Path(__file__).resolve().parents[1]
CPU_RESULTS = REPO / "benchmarks" / "results" / "detector_speed_cpu.json"
INFERENCE_TARGET_MS, TRAINING_SPEEDUP_TARGET = 1.2, 20.0


def gpu_tests() -> dict:
    """The gpu-marked tests, in a child pytest: its summary line and exit code."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs",
                           "tests/components/test_gpu.py", "tests/components/test_batched_scoring.py"],
                          cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return {"exit_code": done.returncode, "summary": lines[-1] if lines else done.stderr[-500:]}


def timings(params, detectors: list[str], device: torch.device, sizes: list[int], batches: list[int], repeats: int,
            budget_s: float) -> list[dict]:
    runs, deadline = [], time.monotonic() + budget_s
    for name in detectors:
        for size in sizes:
            for batch_size in batches:
                for precision in ("fp32", "bf16"):
                    run = {"detector": name, "size": size, "batch": batch_size, "precision": precision}
                    if time.monotonic() > deadline:
                        runs.append(run | {"error": "not measured: past the time budget"})
                        continue
                    try:
                        run |= measure(name, compare_hyperparams(params, name), device, precision, precision == "bf16",
                                       repeats, size, batch_size)
                    except torch.cuda.OutOfMemoryError:
                        run["error"] = "out of memory"
                        torch.cuda.empty_cache()
                    runs.append(run)
                    Console(stderr=True).print(run)
    return runs


def against_targets(runs: list[dict], default: str) -> dict:
    """The default detector's best inference at 128 px, and each detector's best training speedup over the CPU."""
    measured = [r for r in runs if "error" not in r]
    inference = [r["inference_ms_per_slice"] for r in measured if r["detector"] == default and r["size"] == 128]
    cpu = {r["detector"]: r["train_slices_per_s"] for r in json.loads(CPU_RESULTS.read_text())["runs"]} if CPU_RESULTS.exists() else {}
    speedups = {name: round(max(r["train_slices_per_s"] for r in measured if r["detector"] == name and r["size"] == 64)
                            / cpu[name], 1)
                for name in cpu if any(r["detector"] == name and r["size"] == 64 for r in measured)}
    return {"default_detector": default,
            "inference_ms_per_slice_128px": min(inference) if inference else None,
            "inference_target_ms": INFERENCE_TARGET_MS,
            "training_speedup_over_cpu_64px": speedups, "training_speedup_target": TRAINING_SPEEDUP_TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detectors", nargs="+", help="some of compare.detectors (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0, help="for the timings, after the tests")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    params = load_params(REPO / "params.yaml")
    tests = None if args.skip_tests else gpu_tests()
    runs = timings(params, args.detectors or params.compare.detectors, device, args.sizes, args.batches, args.repeats, args.budget_s)
    record = {"benchmark": "GPU check: gpu tests, then training and inference per detector, compare settings",
              "machine": machine_name(device), "torch": torch.__version__, "gpu_tests": tests, "runs": runs,
              "targets": against_targets(runs, params.model.name)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print_table(record)


def print_table(record: dict) -> None:
    table = Table(title=f"{record['benchmark']} ({record['machine']})")
    for column in ("detector", "px", "batch", "train slices/s fp32", "bf16", "inference ms/slice fp32", "bf16"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    cells = {(r["detector"], r["size"], r["batch"], r["precision"]): r for r in record["runs"]}
    for name, size, batch_size in dict.fromkeys((r["detector"], r["size"], r["batch"]) for r in record["runs"]):
        pair = [cells[(name, size, batch_size, p)] for p in ("fp32", "bf16")]
        train = [f"{r['train_slices_per_s']:.0f}" if "error" not in r else r["error"][:14] for r in pair]
        infer = [f"{r['inference_ms_per_slice']:.3f}" if "error" not in r else "" for r in pair]
        table.add_row(name, str(size), str(batch_size), *train, *infer)
    console = Console()
    console.print(table)
    if record["gpu_tests"]:
        console.print(f"gpu tests: {record['gpu_tests']['summary']}")
    targets = record["targets"]
    console.print(f"{targets['default_detector']} at 128 px: {targets['inference_ms_per_slice_128px']} ms/slice "
                  f"(target <= {targets['inference_target_ms']}); training speedup over the 2-core CPU at 64 px: "
                  f"{targets['training_speedup_over_cpu_64px']} (target >= {targets['training_speedup_target']}x)")


if __name__ == "__main__":
    main()
