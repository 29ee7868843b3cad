"""How many Euler steps the rectified flow should take: one trained model scored at each count.

    python benchmarks/flow_steps.py [--params artifacts/compare/rectified_flow/params.yaml] [--steps 1 2 4 8]

Runs after `brainomaly compare --only rectified_flow` (or, with --params params.yaml, after a
pipeline whose model.name is rectified_flow), on the model that trained there. The validation split (healthy and tumour subjects
never trained on; the test split is left for the comparison) is scored at each step count as
evaluate scores it (its workspace's evaluate.score_reference; maps smoothed per subject
as the pixel protocol does): slice AUROC and pixel AUPRC, with the milliseconds a slice costs.
Writes benchmarks/results/flow_steps.json and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.atomic import write_json  # noqa: E402
from components.data.slice_store import load_slices, read_index, slice_spacing  # noqa: E402
from components.machine import machine  # noqa: E402
from components.metrics.postprocess import smooth_by_subject  # noqa: E402
from components.models.inference import score_slices, with_reference  # noqa: E402
from pipelines.evaluate import load_trained  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.preprocess import PROCESSED_DIR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "artifacts/compare/rectified_flow/params.yaml")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/flow_steps.json")
    args = parser.parse_args()
    if not args.params.is_file():
        raise SystemExit(f"{args.params} does not exist: run `brainomaly compare --only rectified_flow` first")
    params = load_params(args.params)
    try:
        detector, description = load_trained(params)
    except FileNotFoundError:
        raise SystemExit(f"{args.params.parent} holds no trained detector: run `brainomaly compare --only "
                         "rectified_flow` first") from None
    if description["model_name"] != "rectified_flow":
        raise SystemExit(f"{args.params} trained a {description['model_name']}, not a rectified_flow")
    root = params.path(PROCESSED_DIR)
    index = read_index(root)
    index = index[index.split == "val"]
    slices = load_slices(root, index)
    abnormal = index.tumour_pixels.to_numpy() > params.evaluate.min_tumour_pixels
    subjects = (index.dataset + "/" + index.subject).to_numpy()
    brain = slices["brain"].astype(bool)
    rows = {}
    for steps in args.steps:
        detector.steps = steps
        start = time.perf_counter()
        scored = score_slices(detector, slices["images"], slices["brain"], progress=f"{steps} step(s)")
        ms = (time.perf_counter() - start) / len(index) * 1000
        scored = with_reference(scored, params.evaluate.score_reference, subjects)
        maps = smooth_by_subject(scored.maps, slices["brain"], subjects, params.evaluate.pixel_median,
                                 params.evaluate.scoring(detector.device).median_spacing(slice_spacing(index)))
        rows[steps] = {"slice_auroc": round(float(roc_auc_score(abnormal, scored.scores)), 4),
                       "pixel_auprc": round(float(average_precision_score(slices["tumour"][brain], maps[brain])), 4),
                       "ms_per_slice": round(ms, 2)}
    report = {"machine": machine(), "params": str(args.params.resolve().relative_to(REPO) if args.params.resolve().is_relative_to(REPO)
                                                  else args.params),
              "trained_steps": description["hyperparams"].get("steps"), "split": "val", "slices": len(index),
              "abnormal_slices": int(abnormal.sum()), "by_steps": rows}
    write_json(args.output, report)
    table = Table(title=f"Rectified flow: Euler steps on the validation split ({len(index)} slices, {machine()})")
    for column in ("steps", "slice AUROC", "pixel AUPRC", "ms a slice"):
        table.add_column(column)
    for steps, row in rows.items():
        table.add_row(str(steps), f"{row['slice_auroc']:.3f}", f"{row['pixel_auprc']:.3f}", f"{row['ms_per_slice']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
