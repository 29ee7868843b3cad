"""Scoring time of one volume's slices by batch size: what CPU_BATCH_SLICES is chosen on.

    python benchmarks/inference_batch.py [--batches 8 16 32 64] [--repeats 9] [--detectors NAME ...]
                                         [--output benchmarks/results/inference_batch_<device>.json]

Runs after `make run`. The BraTS-sized phantom volume of `serving_load.py` goes through the
registry champion's recipe, and its slices are scored with ``score_slices`` in batches of each
size, as every scoring path runs it (all threads of this process). Each ``--detectors`` name
(untrained, built as `brainomaly compare` builds it, at 64 px) is timed the same way: a
network's speed does not depend on its weights. Sizes are timed in turn, round after round, and
the median round is kept (the machine's drift hits every size alike). Each size's maps are
compared with the largest size's: the batch changes only floating-point rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.detector_speed import compare_hyperparams, machine_name  # noqa: E402
from benchmarks.serving_load import brats_sized_volume  # noqa: E402
from benchmarks.volume_verdicts import load_champion  # noqa: E402
from components.models.inference import score_slices  # noqa: E402
from components.models.registry import build_detector, data_hyperparams  # noqa: E402
from components.preprocess.volume import preprocess_volume  # noqa: E402
from pipelines.params import load_params  # noqa: E402


def time_batches(detector, images: np.ndarray, brain: np.ndarray, batches: list[int], repeats: int) -> dict:
    """Median seconds to score all slices at each batch size, and each size's largest map
    difference from the largest size's maps."""
    maps = {b: score_slices(detector, images, brain, batch_size=b).maps for b in batches}  # also the warm-up
    seconds: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):
        for b in batches:
            torch.manual_seed(0)
            start = time.perf_counter()
            score_slices(detector, images, brain, batch_size=b)
            seconds[b].append(time.perf_counter() - start)
    largest = maps[max(batches)]
    return {str(b): {"seconds": round(float(np.median(seconds[b])), 4),
                     "max_map_difference": float(np.abs(maps[b] - largest).max())} for b in batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--detectors", nargs="*", default=[], help="compare detectors to time too (untrained)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    champion = load_champion(params)
    slices = preprocess_volume(*brats_sized_volume(params), champion.bundle.preprocess)
    images, brain = slices.images, slices.brain
    device = champion.detector.device
    runs = [{"detector": f"{champion.bundle.model_name} (champion v{champion.model_version})",
             "batches": time_batches(champion.detector, images, brain, args.batches, args.repeats)}]
    for name in args.detectors:
        torch.manual_seed(0)
        detector = build_detector(name, **compare_hyperparams(params, name), **data_hyperparams(name, 64, (0.0, 1.0)))
        runs.append({"detector": name, "batches": time_batches(detector.to(device), images, brain, args.batches,
                                                               args.repeats)})
        Console(stderr=True).print(f"{name}: {runs[-1]['batches']}")
    record = {"benchmark": f"scoring the {len(images)} slices of a BraTS-sized volume, by batch size",
              "machine": machine_name(device), "repeats": args.repeats, "runs": runs}
    output = args.output or REPO / "benchmarks" / "results" / f"inference_batch_{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    table = Table(title=f"{record['benchmark']} ({record['machine']}): seconds")
    table.add_column("detector")
    for b in args.batches:
        table.add_column(f"batch {b}", justify="right")
    for run in runs:
        table.add_row(run["detector"], *(f"{run['batches'][str(b)]['seconds']:.3f}" for b in args.batches))
    Console().print(table)


if __name__ == "__main__":
    main()
