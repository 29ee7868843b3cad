"""Processed slices as Ray Datasets, so training workers on any node need no shared filesystem.

The driver reads the shard files (compressed, a few MB each) and hands their bytes to Ray Data
(``from_items``), so they reach the decoding tasks and the workers through Ray's object store,
whichever node those run on; no reader needs the driver's filesystem (Ray is retiring the
``local://`` paths that pinned reads to the driver's node). The datasets are materialised before
training starts: decoding tasks need CPUs that the training workers would otherwise hold for the
whole run, and Ray spills to disk what exceeds memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import ray.data

from components.data.slice_store import read_index
from components.metrics.detection import slice_truth


def decode_shards(batch: dict, truth: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Rows of shard files (``path``: the index's shard name; ``bytes``) -> rows of slices:
    ``image`` (1, S, S) float32 and ``brain`` (1, S, S) bool; with ``truth`` (per shard, its
    slices' labels in row order), ``abnormal`` and ``rated`` too: the same label `evaluate` uses
    (``slice_truth`` of the slice index)."""
    images, brains, abnormal, rated = [], [], [], []
    for path, payload in zip(batch["path"], batch["bytes"]):
        with np.load(io.BytesIO(payload)) as archive:
            images.append(archive["images"])
            brains.append(archive["brain"])
        if truth is not None:
            abnormal.append(truth[path][0])
            rated.append(truth[path][1])
    rows = {"image": np.concatenate(images), "brain": np.concatenate(brains)}
    if truth is not None:
        rows |= {"abnormal": np.concatenate(abnormal), "rated": np.concatenate(rated)}
    return rows


def shard_truth(rows: pd.DataFrame, min_tumour_pixels: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per shard, (abnormal, rated) of its slices in the shard's own row order."""
    truth = {}
    for shard, part in rows.sort_values("row").groupby("shard"):
        truth[shard] = slice_truth(part["tumour_pixels"], part["lesion_pixels"], min_tumour_pixels)
    return truth


def slice_dataset(root: Path, cohort: str, split: str, min_tumour_pixels: int | None = None) -> ray.data.Dataset:
    """The slices of one cohort's split, one row per slice; labelled (``abnormal``, ``rated``)
    when ``min_tumour_pixels`` is given."""
    index = read_index(root)
    rows = index[(index["cohort"] == cohort) & (index["split"] == split)]
    shards = sorted(rows["shard"].unique())
    if not shards:
        raise ValueError(f"no {cohort} slices in the {split} split of {root}")
    truth = None if min_tumour_pixels is None else shard_truth(rows, min_tumour_pixels)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one tqdm bar per epoch is noise in logs
    context.print_on_execution_start = False  # and so are a dataset's plan and start, every epoch
    files = ray.data.from_items([{"path": s, "bytes": (root / s).read_bytes()} for s in shards],
                                override_num_blocks=len(shards))
    return files.map_batches(decode_shards, batch_size=1, batch_format="numpy", fn_kwargs={"truth": truth}).materialize()
