"""The tables the data gate checks, each computed from what is on disk (the raw files' headers
and the shards themselves), not from the preprocess stage's own account of them.

- ``raw``:      one row per raw file used (image, mask, segmentation): readable, ndim, dtype,
                affine determinant, voxel sizes, shape agreement with the subject's image
- ``labels``:   one row per segmentation label value found in a raw volume
- ``slices``:   one row per processed slice: finite, min, max, height, width, brain coverage
- ``subjects``: one row per processed subject: how many splits it landed in, mean brain coverage
- ``splits``:   one row per (cohort, split): subjects, slices, fraction of abnormal slices
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from components.data.layouts import Subject
from components.data.slice_store import load_shard
from components.data.splits import SPLITS
from components.metrics.detection import slice_labels


def raw_table(subjects: list[Subject]) -> pd.DataFrame:
    """Header facts of every file of the given subjects (no voxel data is read)."""
    rows = []
    for subject in subjects:
        files = {"image": subject.image, "brain_mask": subject.brain_mask, "segmentation": subject.segmentation,
                 "lesions": subject.lesions}
        image_shape = None
        for role, path in files.items():
            if path is None:
                continue
            row = {"dataset": subject.dataset, "subject": subject.subject_id, "file": Path(path).name, "readable": True}
            try:
                header = nib.load(str(path)).header
                shape, affine = tuple(int(n) for n in header.get_data_shape()), header.get_best_affine()
            except Exception:  # noqa: BLE001 - any unreadable header is one failed row, not a crash
                rows.append(row | {"readable": False})
                continue
            image_shape = shape if role == "image" else image_shape
            sizes = nib.affines.voxel_sizes(affine)
            rows.append(row | {
                "ndim": len(shape), "dtype": str(header.get_data_dtype()),
                "affine_abs_det": float(abs(np.linalg.det(affine[:3, :3]))),
                "min_voxel_mm": float(sizes.min()), "max_voxel_mm": float(sizes.max()),
                "shape_matches_image": shape == image_shape,
            })
    return pd.DataFrame(rows)


def label_table(volumes: pd.DataFrame) -> pd.DataFrame:
    labelled = volumes[volumes["seg_labels"].map(len) > 0]
    table = labelled[["dataset", "subject", "seg_labels"]].explode("seg_labels").rename(columns={"seg_labels": "label"})
    return table.astype({"label": int}) if len(table) else pd.DataFrame({"dataset": [], "subject": [], "label": []})


def slice_table(root: Path, index: pd.DataFrame) -> pd.DataFrame:
    """Per-slice statistics computed from the shards."""
    rows = []
    for shard, group in index.groupby("shard", sort=False):
        arrays = load_shard(root, shard)
        images, brain = arrays["images"], arrays["brain"]
        for _, entry in group.iterrows():
            image, mask = images[entry["row"], 0], brain[entry["row"], 0]
            finite = bool(np.isfinite(image).all())
            rows.append({
                "dataset": entry["dataset"], "subject": entry["subject"], "slice": int(entry["slice"]),
                "split": entry["split"], "finite": finite,
                "min": float(np.nanmin(image)) if finite else np.nan,
                "max": float(np.nanmax(image)) if finite else np.nan,
                "height": image.shape[0], "width": image.shape[1], "brain_coverage": float(mask.mean()),
            })
    return pd.DataFrame(rows)


def subject_table(slices: pd.DataFrame) -> pd.DataFrame:
    return slices.groupby(["dataset", "subject"]).agg(
        n_splits=("split", "nunique"), mean_brain_coverage=("brain_coverage", "mean")
    ).reset_index()


def split_table(index: pd.DataFrame, min_tumour_pixels: int) -> pd.DataFrame:
    """Every (cohort, split) pair, present or not, with its subject and slice counts."""
    rows = []
    for cohort in sorted(index["cohort"].unique()):
        for split in SPLITS:
            part = index[(index["cohort"] == cohort) & (index["split"] == split)]
            abnormal = float(slice_labels(part["tumour_pixels"], min_tumour_pixels).mean()) if len(part) else 0.0
            rows.append({"cohort": cohort, "split": split,
                         "n_subjects": part["subject"].nunique(), "n_slices": len(part), "abnormal_fraction": abnormal})
    return pd.DataFrame(rows)
