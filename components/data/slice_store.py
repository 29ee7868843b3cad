"""The processed-data format: one compressed shard per volume plus a slice index table.

Layout of a processed folder::

    index.parquet            one row per slice (see INDEX_COLUMNS), plus lesion_pixels_<kind>
                             for each kind of other lesion found (label value of the lesions file);
                             slice_mm and pixel_mm are the model slices' spacing (the median's window)
    volumes.parquet          one row per volume: subject, dataset, cohort, split, seg_labels, n_slices
    preprocess_spec.json     the PreprocessSpec that produced the slices
    shards/<dataset>/<subject>.npz   images (N,1,S,S) float32, brain, tumour and lesions
                                     (N,1,S,S) bool, slice_numbers (N,) int

Shards are per volume so a stage (or a Ray worker) reads only the subjects it needs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic import atomic_path
from components.data.layouts import Subject
from components.preprocess.volume import ProcessedSlices

INDEX_COLUMNS = (
    "subject", "dataset", "cohort", "split", "slice", "row", "shard", "tumour_pixels", "brain_pixels", "lesion_pixels",
    "slice_mm", "pixel_mm",
)
SPACING_COLUMNS = ["slice_mm", "pixel_mm"]


def shard_path(root: Path, dataset: str, subject: str) -> Path:
    return Path(root) / "shards" / dataset / f"{subject}.npz"


def write_shard(root: Path, subject: Subject, split: str, slices: ProcessedSlices) -> pd.DataFrame:
    """Save one volume's slices; return its rows of the slice index."""
    path = shard_path(root, subject.dataset, subject.subject_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = np.zeros_like(slices.brain)
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp, images=slices.images, brain=slices.brain, slice_numbers=slices.slice_numbers,
            tumour=slices.tumour if slices.tumour is not None else empty,
            lesions=slices.lesions if slices.lesions is not None else empty,
        )
    return pd.DataFrame(
        {
            "subject": subject.subject_id,
            "dataset": subject.dataset,
            "cohort": subject.cohort,
            "split": split,
            "slice": slices.slice_numbers,
            "row": np.arange(len(slices.slice_numbers)),
            "shard": str(path.relative_to(root)),
            "tumour_pixels": slices.tumour_pixels,
            "brain_pixels": slices.brain_pixels,
            "lesion_pixels": slices.lesion_pixels if slices.lesion_pixels is not None else 0,
            **dict(zip(SPACING_COLUMNS, slices.spacing_mm)),
            **{f"lesion_pixels_{kind}": pixels for kind, pixels in (slices.lesion_kind_pixels or {}).items()},
        }
    )


def slice_spacing(index: pd.DataFrame) -> np.ndarray | None:
    """(N, 2) slice and pixel millimetres of the index's rows; None for data processed before
    they were recorded (their maps are smoothed in cubic windows, as they were then)."""
    return index[SPACING_COLUMNS].to_numpy() if set(SPACING_COLUMNS) <= set(index.columns) else None


def read_index(root: Path) -> pd.DataFrame:
    path = Path(root) / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no slice index at {path}: run `brainomaly preprocess` first")
    return pd.read_parquet(path)


def write_index(root: Path, index: pd.DataFrame) -> Path:
    path = Path(root) / "index.parquet"
    kinds = sorted((c for c in index.columns if c.startswith("lesion_pixels_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    columns = index.loc[:, [*INDEX_COLUMNS, *kinds]]
    columns[kinds] = columns[kinds].fillna(0).astype(np.int64)  # a subject without a kind has none of it
    with atomic_path(path) as tmp:
        columns.to_parquet(tmp, index=False)
    return path


def processed_fingerprint(root: Path) -> str:
    """A short content hash of a processed folder: the slice index, the spec and every shard the
    index lists. Rewritten shards (new intensity code, say) give a new fingerprint even when the
    index and spec are byte-for-byte the same."""
    root = Path(root)
    digest = hashlib.sha256()
    for name in ("index.parquet", "preprocess_spec.json", *sorted(read_index(root)["shard"].unique())):
        digest.update(name.encode())
        with open(root / name, "rb") as file:
            for block in iter(lambda: file.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def load_shard(root: Path, shard: str) -> dict[str, np.ndarray]:
    with np.load(Path(root) / shard) as archive:
        return {key: archive[key] for key in archive.files}


def load_slices(root: Path, index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Stack the slices listed in ``index`` (in its order): images, brain, tumour, lesions arrays."""
    if index.empty:
        raise ValueError("no slices selected")
    parts: dict[str, list[np.ndarray]] = {"images": [], "brain": [], "tumour": [], "lesions": []}
    positions = []
    table = index.reset_index(drop=True)
    for shard, rows in table.groupby("shard", sort=False)["row"]:
        arrays = load_shard(root, shard)
        positions.append(rows.index.to_numpy())
        for key in parts:
            parts[key].append(arrays[key][rows.to_numpy()])
    order = np.argsort(np.concatenate(positions))
    return {key: np.concatenate(value)[order] for key, value in parts.items()}
