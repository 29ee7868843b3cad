"""Processed slices as Ray Datasets, so training workers on any node need no shared filesystem.

The shard files are read by Ray Data tasks pinned to the driver's node (``local://``) and their
slices reach the workers through Ray's object store, whichever node a worker runs on. The
datasets are materialised before training starts: read tasks need CPUs that the training
workers would otherwise hold for the whole run, and Ray spills to disk what exceeds memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import ray.data

from components.data.slice_store import read_index


def decode_shards(batch: dict) -> dict:
    """Rows of shard files (``bytes``) -> rows of slices: ``image`` (1, S, S) float32,
    ``brain`` (1, S, S) bool and ``abnormal`` (whether the slice shows tumour)."""
    images, brains, abnormal = [], [], []
    for payload in batch["bytes"]:
        with np.load(io.BytesIO(payload)) as archive:
            images.append(archive["images"])
            brains.append(archive["brain"])
            abnormal.append(archive["tumour"].reshape(len(archive["tumour"]), -1).any(axis=1))
    return {"image": np.concatenate(images), "brain": np.concatenate(brains), "abnormal": np.concatenate(abnormal)}


def slice_dataset(root: Path, cohort: str, split: str) -> ray.data.Dataset:
    """The slices of one cohort's split, one row per slice."""
    index = read_index(root)
    shards = sorted(index.loc[(index["cohort"] == cohort) & (index["split"] == split), "shard"].unique())
    if not shards:
        raise ValueError(f"no {cohort} slices in the {split} split of {root}")
    ray.data.DataContext.get_current().enable_progress_bars = False  # one tqdm bar per epoch is noise in logs
    files = ray.data.read_binary_files([f"local://{(root / s).resolve()}" for s in shards], override_num_blocks=len(shards))
    return files.map_batches(decode_shards, batch_size=1, batch_format="numpy").materialize()
