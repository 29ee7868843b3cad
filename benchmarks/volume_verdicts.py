"""Per-volume behaviour of the registered champion on every phantom volume of this repo.

    python benchmarks/volume_verdicts.py [--output benchmarks/results/volume_verdicts.json]

Runs after `make run`. For each BraTS-layout volume: mean score of its tumour slices (> 20
tumour pixels) vs its clean slices (no tumour, no other lesion), and the volume verdict; for each HCP-layout (healthy)
volume: the verdict. Calls the same predictor as the HTTP endpoint, without the HTTP layer.
Note that most healthy phantoms were training or validation subjects; the split is in the index.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from components.data.layouts import read_brats, read_hcp
from components.data.nifti_io import load_volume
from pipelines.params import load_params
from pipelines.tracking import tracking_uri
from pipelines.model_store import fetch_bundle
from components.scoring.predictor import VolumePredictor

REPO = Path(__file__).resolve().parents[1]


def load_champion(params, version: str | None = None) -> VolumePredictor:
    """The registry's champion, or the registered ``version`` when one is named."""
    uri = f"models:/{params.registry.model_name}" + (f"/{version}" if version else f"@{params.registry.alias}")
    with tempfile.TemporaryDirectory() as tmp:
        folder, name, version = fetch_bundle(uri, tracking_uri(params), Path(tmp))
        return VolumePredictor.from_folder(folder, name, version)


def tumour_rows(predictor: VolumePredictor, params, splits: dict) -> list[dict]:
    rows = []
    for case in read_brats(params.path(params.phantoms.brats_root), params.data.modality):
        image, affine = load_volume(case.image)
        seg, _ = load_volume(case.segmentation)
        lesions = load_volume(case.lesions)[0] if case.lesions else np.zeros_like(seg)
        result = predictor.predict(image, affine)
        pixels = {s["index"]: int((seg[:, :, s["index"]] > 0).sum()) for s in result["slices"]}
        other = {s["index"]: bool(lesions[:, :, s["index"]].any()) for s in result["slices"]}
        tumour = [s["score"] for s in result["slices"] if pixels[s["index"]] > 20]
        clean = [s["score"] for s in result["slices"] if pixels[s["index"]] == 0 and not other[s["index"]]]
        rows.append({
            "subject": case.subject_id, "dataset": "brats", "split": splits.get(case.subject_id),
            "tumour_voxels": int((seg > 0).sum()),
            "tumour_slice_mean": float(np.mean(tumour)) if tumour else None,
            "clean_slice_mean": float(np.mean(clean)) if clean else None,
            "tumour_scores_higher": bool(tumour and clean and np.mean(tumour) > np.mean(clean)),
            "volume_verdict": result["volume_verdict"],
        })
    return rows


def healthy_rows(predictor: VolumePredictor, params, splits: dict) -> list[dict]:
    rows = []
    for case in read_hcp(params.path(params.phantoms.hcp_root), params.data.modality):
        result = predictor.predict(*load_volume(case.image))
        rows.append({"subject": case.subject_id, "dataset": "hcp", "split": splits.get(case.subject_id),
                     "volume_verdict": result["volume_verdict"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "volume_verdicts.json")
    args = parser.parse_args()
    params = load_params(args.params)
    index = pd.read_parquet(params.path("data/processed/volumes.parquet"))
    splits = dict(zip(index["subject"], index["split"]))
    predictor = load_champion(params)
    tumour, healthy = tumour_rows(predictor, params, splits), healthy_rows(predictor, params, splits)
    summary = {
        "model": f"{predictor.model_name} v{predictor.model_version}",
        "tumour_volumes": len(tumour),
        "tumour_volumes_with_abnormal_slices": sum(r["tumour_slice_mean"] is not None for r in tumour),
        "tumour_slices_score_higher": sum(r["tumour_scores_higher"] for r in tumour),
        "tumour_volumes_flagged": sum(r["volume_verdict"] == "anomalous" for r in tumour),
        "healthy_volumes": len(healthy),
        "healthy_volumes_flagged": sum(r["volume_verdict"] == "anomalous" for r in healthy),
        "healthy_test_volumes_flagged": sum(r["volume_verdict"] == "anomalous" for r in healthy if r["split"] == "test"),
        "healthy_test_volumes": sum(r["split"] == "test" for r in healthy),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "volumes": tumour + healthy}, indent=2))

    table = Table(title=f"Volume verdicts of {summary['model']}")
    for column in ("subject", "split", "tumour voxels", "tumour slices", "clean slices", "verdict"):
        table.add_column(column)
    mean = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    for r in tumour:
        table.add_row(r["subject"], r["split"], str(r["tumour_voxels"]), mean(r["tumour_slice_mean"]),
                      mean(r["clean_slice_mean"]), r["volume_verdict"])
    Console().print(table)
    Console().print(summary)


if __name__ == "__main__":
    main()
