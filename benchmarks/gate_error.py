"""How often the promotion gate promotes a model that is no better, and how often one that is.

    python benchmarks/gate_error.py [--pairs 1000] [--output benchmarks/results/gate_error.json]

Simulates pairs of models scoring the test split, laid out as the default data's is (its
subjects, their slices and which slices are abnormal, read from data/processed after `make
run`), and as a larger split (20 tumour and 10 healthy subjects like them). A model's slice score
is the scan's own offset (shared by both models: the same data), the model's offset for that scan
(two trainings place a scan differently), slice noise correlated along the scan and between the
two models, and a shift on abnormal slices. "Equal" models draw every term alike; in a "better"
pair the candidate's abnormal slices stand out more (about +0.05 slice AUROC). Each pair goes
through the gate's own test (components/metrics/promotion.py, no margin, so the test alone is
measured) and through the gate with params.yaml's margins. Reports the promotion rate with its
exact 95 % interval: for equal models it is the gate's false promotion rate (target <= 5 %).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.atomic import write_json  # noqa: E402
from components.data.slice_store import read_index  # noqa: E402
from components.machine import machine  # noqa: E402
from components.metrics.conformal import exact_interval  # noqa: E402
from components.metrics.detection import slice_truth  # noqa: E402
from components.metrics.promotion import PromotionRule, auroc, decide  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.preprocess import PROCESSED_DIR  # noqa: E402

SCAN_SD, MODEL_SCAN_SD, SHARED_NOISE, ALONG_SCAN = 0.5, 0.3, 0.7, 0.6
SHIFT, BETTER_SHIFT = 1.5, 1.9


def test_layout(index: pd.DataFrame, min_tumour_pixels: int) -> pd.DataFrame:
    """The rated test slices of a processed index: subject, slice, abnormal (evaluate's labels)."""
    test = index[index["split"] == "test"]
    labels, rated = slice_truth(test["tumour_pixels"], test["lesion_pixels"], min_tumour_pixels)
    subjects = test["dataset"].astype(str) + "/" + test["subject"].astype(str)
    return pd.DataFrame({"subject": subjects.to_numpy()[rated], "slice": test["slice"].to_numpy()[rated],
                         "abnormal": labels[rated]})


def enlarged(layout: pd.DataFrame, tumour: int, healthy: int) -> pd.DataFrame:
    """A split of ``tumour`` and ``healthy`` subjects, each a copy of one of ``layout``'s own."""
    has_tumour = layout.groupby("subject")["abnormal"].any()
    parts = []
    for count, pool in ((tumour, has_tumour[has_tumour].index), (healthy, has_tumour[~has_tumour].index)):
        for i in range(count):
            source = pool[i % len(pool)]
            parts.append(layout[layout["subject"] == source].assign(subject=f"{source}#{i}"))
    return pd.concat(parts, ignore_index=True)


def along_scan(rng: np.random.Generator, length: int) -> np.ndarray:
    """Unit-variance noise correlated between neighbouring slices (AR(1))."""
    noise = rng.normal(size=length)
    for k in range(1, length):
        noise[k] = ALONG_SCAN * noise[k - 1] + np.sqrt(1 - ALONG_SCAN**2) * noise[k]
    return noise


def model_pair(layout: pd.DataFrame, rng: np.random.Generator, candidate_shift: float = SHIFT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test-slice scores of a candidate and a champion (shift SHIFT) on ``layout``."""
    scores = {"candidate": [], "champion": []}
    for _, rows in layout.groupby("subject", sort=False):
        scan, shared = rng.normal(0, SCAN_SD), along_scan(rng, len(rows))
        abnormal = rows["abnormal"].to_numpy()
        for name, shift in (("candidate", candidate_shift), ("champion", SHIFT)):
            own = rng.normal(0, MODEL_SCAN_SD) + np.sqrt(SHARED_NOISE) * shared + np.sqrt(1 - SHARED_NOISE) * along_scan(rng, len(rows))
            scores[name].append(pd.Series(scan + own + shift * abnormal, index=rows.index))
    return tuple(layout.assign(score=pd.concat(scores[name]).sort_index()) for name in ("candidate", "champion"))


def promotion_rate(layout: pd.DataFrame, rule: PromotionRule, pairs: int, candidate_shift: float, seed: int) -> dict:
    """How many of ``pairs`` simulated pairs the gate promotes, with the exact interval."""
    rng, promoted, gains = np.random.default_rng(seed), 0, []
    labels = layout["abnormal"].to_numpy(bool)
    for _ in range(pairs):
        candidate, champion = model_pair(layout, rng, candidate_shift)
        value, champion_value = (auroc(labels, frame["score"].to_numpy()) for frame in (candidate, champion))
        gains.append(value - champion_value)
        promoted += decide("slice_auroc", value, champion_value, True, candidate, champion, rule).promote
    low, high = exact_interval(promoted, pairs)
    return {"promoted": promoted, "pairs": pairs, "rate": promoted / pairs, "exact95": [low, high],
            "mean_auroc_gain": float(np.mean(gains))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/gate_error.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    default = test_layout(read_index(params.path(PROCESSED_DIR)), params.evaluate.min_tumour_pixels)
    layouts = {"default split": default, "20 tumour + 10 healthy": enlarged(default, 20, 10)}
    rules = {"test alone": replace(params.registry.rule, margins={"slice_auroc": 0.0}, permutations=500),
             "with the margin": replace(params.registry.rule, permutations=500)}
    start, results = time.perf_counter(), {}
    for split, layout in layouts.items():
        tumour = int(layout.groupby("subject")["abnormal"].any().sum())
        results[split] = {"tumour_subjects": tumour, "healthy_subjects": layout["subject"].nunique() - tumour,
                          "slices": len(layout), "abnormal_slices": int(layout["abnormal"].sum())}
        for rule_name, rule in rules.items():
            for kind, shift in (("equal", SHIFT), ("better", BETTER_SHIFT)):
                results[split][f"{kind}, {rule_name}"] = promotion_rate(layout, rule, args.pairs, shift, seed=1)
    write_json(args.output, {"machine": machine(), "pairs": args.pairs, "margin": params.registry.rule.margins["slice_auroc"],
                             "confidence": params.registry.rule.confidence, "wall_seconds": time.perf_counter() - start,
                             "splits": results})
    table = Table(title=f"The promotion gate on {args.pairs} simulated pairs (slice AUROC)")
    for column in ("split", "subjects", "pair", "gate", "promoted", "exact 95 %", "mean gain"):
        table.add_column(column, justify="left" if column in ("split", "pair", "gate") else "right")
    for split, found in results.items():
        for key, rate in ((k, v) for k, v in found.items() if isinstance(v, dict)):
            kind, rule_name = key.split(", ")
            table.add_row(split, f"{found['tumour_subjects']} + {found['healthy_subjects']}", kind, rule_name,
                          f"{rate['rate']:.1%}", f"[{rate['exact95'][0]:.1%}, {rate['exact95'][1]:.1%}]",
                          f"{rate['mean_auroc_gain']:+.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
