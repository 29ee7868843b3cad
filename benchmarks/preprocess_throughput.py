"""Preprocessing throughput on BraTS-sized volumes (240 x 240 x 155, 1 mm, .nii.gz).

    python benchmarks/preprocess_throughput.py [--volumes 12] [--output benchmarks/results/preprocess_throughput.json]

Writes phantom tumour cases at 1 mm on the BraTS grid into a temporary BraTS-layout folder,
then runs the preprocess stage's per-volume function (read, mask, normalise, select, resize)
over them: the standard recipe with 1 and 2 worker processes and with twice the volumes, then
the same with N4 bias-field correction, and the full dual_vae_improved recipe (N4, histogram
matching, 128 px). Reports volumes per minute and the peak resident memory of one worker
(which must not grow with the number of volumes).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from components.data.layouts import read_dataset
from components.data.phantoms import PhantomSpec, load_atlas, make_subject, write_brats_subject
from components.data.nifti_io import load_volume
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import reference_landmarks
from pipelines.params import PreprocessParams
from pipelines.preprocess import process_subject
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
BRATS_SHAPE = (240, 240, 155)


def fit(volume: np.ndarray, shape=BRATS_SHAPE) -> np.ndarray:
    """Centre-pad or centre-crop to ``shape``."""
    out = np.zeros(shape, volume.dtype)
    src = tuple(slice(max(0, (v - s) // 2), max(0, (v - s) // 2) + min(v, s)) for v, s in zip(volume.shape, shape))
    dst = tuple(slice(max(0, (s - v) // 2), max(0, (s - v) // 2) + min(v, s)) for v, s in zip(volume.shape, shape))
    out[dst] = volume[src]
    return out


def write_cases(root: Path, count: int) -> None:
    """Two distinct 1 mm phantom cases on the BraTS grid, copied to ``count`` case folders."""
    atlas = load_atlas(1.0)
    for i in range(2):
        subject = make_subject(atlas, PhantomSpec(), np.random.default_rng(i), with_tumour=True)
        write_brats_subject(root, f"BraTS2021_{i:05d}", {k: fit(v) for k, v in subject.volumes.items()}, subject.affine)
    for i in range(2, count):
        source = root / f"BraTS2021_{i % 2:05d}"
        target = root / f"BraTS2021_{i:05d}"
        target.mkdir()
        for file in source.iterdir():
            shutil.copy(file, target / file.name.replace(source.name, target.name))


def peak_rss_mb(_: int = 0) -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recipes(root: Path) -> dict[str, PreprocessSpec]:
    """The recipes measured; histogram landmarks taken from the first case, as the stage would."""
    improved = PreprocessParams(preset="dual_vae_improved").spec()
    image, affine = load_volume(read_dataset(root, "brats", "t2", "tumour")[0].image)
    return {
        "standard": PreprocessSpec(),
        "standard + N4": PreprocessSpec(bias_correction=True),
        "dual_vae_improved": replace(improved, histogram_landmarks=reference_landmarks(image, affine, improved)),
    }


def measure(root: Path, recipe: str, spec: PreprocessSpec, workers: int, volumes: int) -> dict:
    subjects = read_dataset(root, "brats", "t2", "tumour")[:volumes]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(peak_rss_mb, range(workers)))  # start the workers before timing
        start = time.perf_counter()
        slices = sum(len(s.slice_numbers) for s, _ in pool.map(process_subject, subjects, [spec] * len(subjects)))
        seconds = time.perf_counter() - start
        rss = max(pool.map(peak_rss_mb, range(workers * 4)))
    return {"recipe": recipe, "workers": workers, "volumes": len(subjects), "slices": slices, "seconds": round(seconds, 2),
            "volumes_per_minute": round(60 * len(subjects) / seconds, 1), "peak_worker_rss_mb": round(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=12)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "preprocess_throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_cases(Path(tmp), 2 * args.volumes)
        specs = recipes(Path(tmp))
        plan = [("standard", 1, args.volumes), ("standard", 2, args.volumes), ("standard", 2, 2 * args.volumes),
                ("standard + N4", 1, args.volumes // 2), ("standard + N4", 2, args.volumes),
                ("dual_vae_improved", 2, args.volumes)]
        runs = [measure(Path(tmp), recipe, specs[recipe], workers, count) for recipe, workers, count in plan]
    record = {"benchmark": "preprocess, BraTS-sized .nii.gz volumes (240x240x155, 1 mm)",
              "machine": machine(), "target_volumes_per_minute": 30, "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    table = Table(title=record["benchmark"])
    table.add_column("recipe")
    for column in ("workers", "volumes", "seconds", "volumes/min", "peak worker RSS (MB)"):
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(r["recipe"], str(r["workers"]), str(r["volumes"]), f"{r['seconds']:.1f}", f"{r['volumes_per_minute']:.1f}",
                      str(r["peak_worker_rss_mb"]))
    Console().print(table)


if __name__ == "__main__":
    main()
