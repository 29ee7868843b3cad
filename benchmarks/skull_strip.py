"""How well does the recipe's brain extraction find the brain of a skull-on scan?

    python benchmarks/skull_strip.py --healthy DIR [--modality t1] [--grid]
                                     [--output benchmarks/results/skull_strip.json]

Every scan of ``--healthy`` that has a brain mask or label map beside it (IXI with its label maps,
HCP, ...) and still has its skull is reduced to its brain by ``extract_brain`` (the recipe's
``skull_strip``) and, for comparison, to its head by Otsu's threshold (``skull_strip: false``);
each mask is compared with the given one: Dice, and its volume over the given volume. ``--grid``
also tries every erosion of 4, 6 and 8 mm with a regrowth of 2 and 4 mm beyond it (how
ERODE_MM and REGAIN_MM were chosen). Writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse
import time
from itertools import product
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from components.atomic import write_json
from components.data.layouts import read_dataset
from components.data.nifti_io import load_volume
from components.preprocess.brain_mask import ERODE_MM, REGAIN_MM, extract_brain, is_skull_stripped, otsu_head_mask
from components.preprocess.geometry import ras_spacing, to_ras
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
GRID = list(product((4.0, 6.0, 8.0), (2.0, 4.0)))


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))


def methods(grid: bool) -> dict:
    """Name: mask of a RAS image and its spacing."""
    chosen = {f"extract_brain ({ERODE_MM:g} + {REGAIN_MM:g} mm)": lambda image, spacing: extract_brain(image, spacing)}
    others = {f"extract_brain ({e:g} + {r:g} mm)": lambda image, spacing, e=e, r=r: extract_brain(image, spacing, e, r)
              for e, r in GRID if (e, r) != (ERODE_MM, REGAIN_MM)} if grid else {}
    return {**chosen, **others, "Otsu head (skull_strip: false)": lambda image, spacing: otsu_head_mask(image)}


def summary(values: dict[str, list[float]], seconds: float) -> dict:
    dices, ratios = np.array(values["dice"]), np.array(values["volume_ratio"])
    return {"dice_mean": float(dices.mean()), "dice_min": float(dices.min()), "dice_p5": float(np.percentile(dices, 5)),
            "volume_ratio_mean": float(ratios.mean()), "seconds_per_scan": seconds / len(dices)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=Path, required=True, help="skull-on scans with a brain mask or label map beside each")
    parser.add_argument("--modality", default="t1")
    parser.add_argument("--grid", action="store_true", help="also try the other erosions and regrowths")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/skull_strip.json")
    args = parser.parse_args()
    if not args.healthy.is_dir():
        parser.error(f"no such folder: {args.healthy}")
    subjects = [s for s in read_dataset(args.healthy, "auto", args.modality, "healthy") if s.brain_mask is not None]
    if not subjects:
        parser.error(f"no scan in {args.healthy} has a brain mask beside it to compare with")
    found = {name: {"dice": [], "volume_ratio": [], "seconds": 0.0} for name in methods(args.grid)}
    for subject in tqdm(subjects, unit="scan"):
        image, affine = load_volume(subject.image)
        image, truth, spacing = to_ras(image, affine)[0], to_ras(load_volume(subject.brain_mask)[0], affine)[0] > 0, ras_spacing(affine)
        if is_skull_stripped(image, spacing):
            continue
        for name, method in methods(args.grid).items():
            start = time.perf_counter()
            mask = method(image, spacing)
            found[name]["seconds"] += time.perf_counter() - start
            found[name]["dice"].append(dice(mask, truth))
            found[name]["volume_ratio"].append(float(mask.sum() / max(truth.sum(), 1)))
    scans = len(next(iter(found.values()))["dice"])
    if not scans:
        parser.error(f"every scan in {args.healthy} is already skull-stripped: nothing to extract")
    report = {"machine": machine(), "healthy": args.healthy.resolve().name, "modality": args.modality,
              "scans": scans, "methods": {name: summary(values, values["seconds"]) for name, values in found.items()}}
    write_json(args.output, report)
    table = Table(title=f"Brain masks of {scans} skull-on {args.modality} scans of {report['healthy']} against their own")
    for heading in ("mask", "Dice mean", "Dice 5th pct", "Dice min", "volume / given", "s per scan"):
        table.add_column(heading)
    for name, row in report["methods"].items():
        table.add_row(name, *(f"{row[k]:.3f}" for k in ("dice_mean", "dice_p5", "dice_min", "volume_ratio_mean")),
                      f"{row['seconds_per_scan']:.1f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
