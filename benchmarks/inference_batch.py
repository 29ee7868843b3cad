"""Scoring time of one volume's slices by batch size and batches at once: what
BATCH_SLICES and ``scoring_threads`` are chosen on.

    python benchmarks/inference_batch.py [--batches 8 16 32 64] [--threads 1 2] [--every 1 2]
                                         [--precision fp32|bf16] [--repeats 9] [--detectors NAME ...]
                                         [--output benchmarks/results/inference_batch_<device>.json]

Runs after `make run`. The BraTS-sized phantom volume of `serving_load.py` goes through the
registry champion's recipe, and its slices (all of them, and every second one as the endpoint
scores a 1 mm scan, ``--every``) are scored with ``score_slices`` in the champion's precision
(or ``--precision``), as every scoring path runs it, in batches of at most each size, cut evenly for that many
batches at once (``--threads``; every thread of this process serves each batch's operations).
Each ``--detectors`` name (untrained, built as `brainomaly compare` builds it, at 64 px) is timed
the same way: a network's speed does not depend on its weights. The settings are timed in turn,
round after round, and the median round is kept (the machine's drift hits every setting alike).
Each setting's maps are compared with the first's: they change only floating-point rounding.
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
from components.machine import usable_cpus  # noqa: E402
from components.models.inference import score_slices  # noqa: E402
from components.models.registry import build_detector, data_hyperparams  # noqa: E402
from components.preprocess.volume import preprocess_volume  # noqa: E402
from components.scoring.thinning import every_kth  # noqa: E402
from pipelines.params import load_params  # noqa: E402


def time_batches(detector, images: np.ndarray, brain: np.ndarray, settings: list[tuple[int, int]], repeats: int,
                 precision: str) -> dict:
    """Median seconds to score all slices at each (batch size, threads) setting, and each
    setting's largest map and score differences from the first's; the first's largest map value
    and score, to weigh those by."""
    def scored(batch: int, threads: int):
        torch.manual_seed(0)
        return score_slices(detector, images, brain, batch_size=batch, threads=threads, precision=precision)

    results = {setting: scored(*setting) for setting in settings}  # also the warm-up
    seconds: dict[tuple[int, int], list[float]] = {setting: [] for setting in settings}
    for _ in range(repeats):
        for setting in settings:
            start = time.perf_counter()
            scored(*setting)
            seconds[setting].append(time.perf_counter() - start)
    first = results[settings[0]]
    return {"largest_map_value": float(first.maps.max()), "largest_score": float(np.abs(first.scores).max()),
            "settings": {label(*setting): {
                "seconds": round(float(np.median(seconds[setting])), 4),
                "max_map_difference": float(np.abs(results[setting].maps - first.maps).max()),
                "max_score_difference": float(np.abs(results[setting].scores - first.scores).max())}
                for setting in settings}}


def label(batch: int, threads: int) -> str:
    return f"batch {batch}, {threads} at once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, usable_cpus()}))
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2], help="score every k-th slice")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: the champion's")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--detectors", nargs="*", default=[], help="compare detectors to time too (untrained)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    champion = load_champion(params)
    precision = args.precision or champion.bundle.calibration.precision
    slices = preprocess_volume(*brats_sized_volume(params), champion.bundle.preprocess)
    settings = [(batch, threads) for threads in args.threads for batch in args.batches]
    device = champion.detector.device
    detectors = [(f"{champion.bundle.model_name} (champion v{champion.model_version})", champion.detector)]
    for name in args.detectors:
        torch.manual_seed(0)
        detector = build_detector(name, **compare_hyperparams(params, name), **data_hyperparams(name, 64, (0.0, 1.0)))
        detectors.append((name, detector.to(device)))
    runs = []
    for name, detector in detectors:
        for every in args.every:
            picked = every_kth(len(slices.images), every)
            runs.append({"detector": name, "slices": len(picked),
                         **time_batches(detector, slices.images[picked], slices.brain[picked], settings,
                                        args.repeats, precision)})
            Console(stderr=True).print(f"{name}, {len(picked)} slices: {runs[-1]['settings']}")
    record = {"benchmark": "scoring a BraTS-sized volume's slices, by batch size and batches at once",
              "machine": machine_name(device), "precision": precision, "repeats": args.repeats, "runs": runs}
    output = args.output or REPO / "benchmarks" / "results" / f"inference_batch_{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    table = Table(title=f"{record['benchmark']} ({record['machine']}, {precision}): seconds")
    table.add_column("detector")
    table.add_column("slices", justify="right")
    for setting in settings:
        table.add_column(label(*setting), justify="right")
    for run in runs:
        table.add_row(run["detector"], str(run["slices"]),
                      *(f"{run['settings'][label(*setting)]['seconds']:.3f}" for setting in settings))
    Console().print(table)


if __name__ == "__main__":
    main()
