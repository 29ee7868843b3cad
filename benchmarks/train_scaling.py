"""Ray Train's overhead and its scaling with workers, on this machine.

    python benchmarks/train_scaling.py [--epochs 4] [--output benchmarks/results/train_scaling.json]

The same detector (params.yaml's model), data (data/processed: run `make run` first) and epochs,
side by side in one run: the workers' own loop (components/training) in this process without
Ray (batches from the processed slices held in memory, every core's threads), then the `train` stage's Ray Train
run with 1 worker and with 2, the cores split between the workers (a worker's torch threads are
its CPUs), so each run has the whole machine and the overhead is Ray's alone. Reported:
training throughput in slices per second over the epochs after the first (the steady state:
Ray Train's per-epoch number, the plain loop timed the same way), and the wall time of the
whole run including start-up. On a GPU machine use --gpu (one GPU per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from components.data.slice_store import load_slices, read_index
from components.models.registry import build_detector
from components.training.loop import LoopData, prepare, run_epochs
from pipelines import train
from pipelines.params import load_params
from pipelines.ray_cluster import ray_session

REPO = Path(__file__).resolve().parents[1]


def plain_loop(config: train.TrainingConfig, epochs: int, device: torch.device) -> dict:
    """The workers' own loop (components/training) without Ray: one process, all threads,
    batches drawn from the training slices held in memory."""
    root, settings = Path(config.data_root), config.train
    index = read_index(root)
    arrays = load_slices(root, index[(index["cohort"] == "healthy") & (index["split"] == "train")])
    images, brain = torch.from_numpy(arrays["images"]).to(device), torch.from_numpy(arrays["brain"]).to(device)
    torch.manual_seed(settings.seed)
    detector = build_detector(config.model_name, **config.hyperparams)
    loop = replace(train.loop_settings(config, rank=0), epochs=epochs)
    optimizers, _ = prepare(detector, settings.learning_rate, device, loop)

    def batches():
        order, size = torch.randperm(len(images), device=device), settings.batch_size
        return ({"image": images[rows], "brain": brain[rows]} for rows in order[: len(order) // size * size].split(size))

    rates, start = [], time.perf_counter()
    run_epochs(detector, optimizers, LoopData(train=batches), loop, device,
               lambda metrics, state: rates.append(metrics["train_slices_per_s"]))
    return {"slices_per_s": float(np.mean(rates[1:] or rates)), "wall_s": time.perf_counter() - start}


def ray_run(params, epochs: int, workers: int, use_gpu: bool) -> dict:
    """The train stage's own Ray Train run, in a scratch storage folder (nothing resumes)."""
    cpus = max(1, (os.cpu_count() or 1) // workers)  # the machine's cores split between the workers
    config = train.training_config(params).with_changes(
        train={"epochs": epochs, "num_workers": workers, "use_gpu": use_gpu, "cpus_per_worker": cpus})  # untracked
    with tempfile.TemporaryDirectory() as storage, ray_session():
        start = time.perf_counter()
        result = train.fit(train.make_trainer(config, f"scaling-{workers}", storage))
        wall = time.perf_counter() - start
    history = result.metrics_dataframe["train_slices_per_s"].tolist()
    return {"slices_per_s": float(np.mean(history[1:] or history)), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "train_scaling.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    config = train.training_config(params)
    device = torch.device("cuda" if args.gpu else "cpu")
    runs = {"plain PyTorch loop": plain_loop(config, args.epochs, device)}
    for workers in (1, 2):
        runs[f"Ray Train, {workers} worker{'s' * (workers > 1)}"] = ray_run(params, args.epochs, workers, args.gpu)
    plain, one, two = (r["slices_per_s"] for r in runs.values())
    record = {"benchmark": f"training throughput, {params.model.name}, {args.epochs} epochs",
              "machine": torch.cuda.get_device_name() if args.gpu else f"{os.cpu_count()}-core CPU ({platform.machine()})",
              "runs": runs, "ray_overhead_1_worker": round(1 - one / plain, 3), "speedup_2_workers": round(two / one, 2)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    table = Table(title=f"{record['benchmark']} ({record['machine']})")
    for column in ("run", "slices/s (steady)", "wall s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, r in runs.items():
        table.add_row(name, f"{r['slices_per_s']:.1f}", f"{r['wall_s']:.1f}")
    Console().print(table)
    Console().print(f"Ray Train overhead, 1 worker: {100 * record['ray_overhead_1_worker']:.1f} % (target <= 10 %); "
                    f"2 workers vs 1: {record['speedup_2_workers']:.2f}x")


if __name__ == "__main__":
    main()
