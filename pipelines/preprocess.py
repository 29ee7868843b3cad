"""Stage `preprocess`: every subject of every layout -> slice shards + slice index + spec."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.data.layouts import Subject, read_dataset
from components.data.nifti_io import load_volume
from components.data.slice_store import write_index, write_shard
from components.data.splits import assign_splits
from components.preprocess.volume import preprocess_volume
from pipelines.params import Params

log = logging.getLogger(__name__)
PROCESSED_DIR = Path("data/processed")


def discover(params: Params) -> list[Subject]:
    """Healthy then tumour subjects, each cohort read with its layout (detected when 'auto')."""
    data = params.data
    return [
        *read_dataset(params.path(data.healthy_root), data.healthy_layout, data.modality, cohort="healthy"),
        *read_dataset(params.path(data.tumour_root), data.tumour_layout, data.modality, cohort="tumour"),
    ]


def process_subject(subject: Subject, params: Params) -> tuple:
    """Load one subject's files and preprocess them; returns (slices, raw segmentation labels)."""
    image, affine = load_volume(subject.image)
    mask = load_volume(subject.brain_mask)[0] if subject.brain_mask else None
    seg = load_volume(subject.segmentation)[0] if subject.segmentation else None
    slices = preprocess_volume(image, affine, params.preprocess.spec(), brain_mask=mask, segmentation=seg)
    labels = sorted(int(v) for v in np.unique(seg)) if seg is not None else []
    return slices, labels


def run(params: Params) -> dict:
    out = params.path(PROCESSED_DIR)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subjects = discover(params)
    ratios = params.preprocess.split.model_dump()
    splits = {}
    for dataset in {s.dataset for s in subjects}:
        ids = [s.subject_id for s in subjects if s.dataset == dataset]
        splits.update({(dataset, k): v for k, v in assign_splits(ids, ratios, params.preprocess.seed).items()})
    rows, volumes = [], []
    for subject in tqdm(subjects, desc="preprocess", unit="volume"):
        slices, labels = process_subject(subject, params)
        split = splits[(subject.dataset, subject.subject_id)]
        rows.append(write_shard(out, subject, split, slices))
        volumes.append({"subject": subject.subject_id, "dataset": subject.dataset, "cohort": subject.cohort, "split": split,
                        "seg_labels": labels, "n_slices": len(slices.slice_numbers)})
    index = pd.concat(rows, ignore_index=True)
    write_index(out, index)
    pd.DataFrame(volumes).to_parquet(out / "volumes.parquet", index=False)
    params.preprocess.spec().to_json(out / "preprocess_spec.json")
    counts = index.groupby(["cohort", "dataset", "split"]).size().to_dict()
    return {"volumes": len(subjects), "slices": len(index), "by_split": {"/".join(k): n for k, n in counts.items()}}
