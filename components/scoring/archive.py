"""Whole archives: every scan under a folder, and results a rerun picks up from.

A scan is a NIfTI file, or a folder of one DICOM series' files; a folder in a dataset layout
(BraTS, IXI, ...) gives its cases, with their brain masks where the layout has them. Results go
to an output folder as parquet parts, written whole or not at all:

    verdicts/   one row a scan: its volume score and verdict, slices scored, the model
    slices/     one row a scored slice: its index along the scan's axial axis, score, verdict
    failed/     one row a scan that could not be read or scored, with the reason
    maps/       the anomaly map of each scan as NIfTI on its own grid, when asked for

A scan listed in ``verdicts`` or ``failed`` is done: a rerun, after Ctrl+C or a crash, scores
only the rest, and what was in flight when it stopped is scored again.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.atomic import atomic_path
from components.data.dicom_io import read_series
from components.data.layouts import LAYOUTS, LayoutError, detect_layout, read_dataset
from components.data.nifti_io import VolumeLimits, load_volume

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TABLES = ("verdicts", "slices", "failed")


@dataclass(frozen=True)
class ArchiveScan:
    case: str  # its path under the archive's root: the key of its results
    kind: Literal["nifti", "dicom"]
    paths: tuple[str, ...]  # the NIfTI file, or the series' files
    brain_mask: str | None = None  # where the layout gives one: voxels outside it are zeroed


def find_scans(root: Path, layout: str = "auto", modality: str = "t2") -> list[ArchiveScan]:
    """Every scan under ``root``: a dataset layout's cases (``layout``, or detected), or else every
    NIfTI file and every folder of DICOM files below it, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"archive folder not found: {root}")
    name = layout if layout != "auto" else _release_layout(root)
    if name is not None:
        return [ArchiveScan(s.subject_id, "nifti", (str(s.image),), str(s.brain_mask) if s.brain_mask else None)
                for s in read_dataset(root, name, modality)]
    scans = []
    for folder, _, names in sorted(os.walk(root)):
        names = sorted(n for n in names if not n.startswith("."))
        relative = Path(folder).relative_to(root)
        scans += [ArchiveScan(str(relative / _stem(n)), "nifti", (str(Path(folder) / n),))
                  for n in names if n.endswith(NIFTI_SUFFIXES)]
        dicom = [str(Path(folder) / n) for n in names if n.lower().endswith(".dcm") or _is_part10(Path(folder) / n)]
        if dicom:
            scans.append(ArchiveScan(str(relative), "dicom", tuple(dicom)))
    if not scans:
        raise LayoutError(f"no scans under {root}: expected .nii/.nii.gz files, DICOM series folders or a dataset layout")
    return scans


def _release_layout(root: Path) -> str | None:
    """A release's own layout, when ``root`` follows one (a plain folder is walked instead)."""
    try:
        name = detect_layout(root)
    except LayoutError:
        return None
    return None if name == "plain" or name not in LAYOUTS else name


def _stem(name: str) -> str:
    return name.removesuffix(".gz").removesuffix(".nii")


def _is_part10(path: Path) -> bool:
    """A DICOM file without the .dcm suffix (scanners often write none), by its preamble."""
    if "." in path.name:
        return False
    with path.open("rb") as file:
        return file.read(132)[128:132] == b"DICM"


def read_scan(scan: ArchiveScan, limits: VolumeLimits = VolumeLimits()) -> tuple[np.ndarray, np.ndarray]:
    """(float32 data, RAS+ affine) of one scan, skull-stripped with its brain mask where it has one."""
    if scan.kind == "dicom":
        data, affine, _ = read_series([(Path(p).name, Path(p).read_bytes()) for p in scan.paths], limits)
        return data, affine
    data, affine = load_volume(scan.paths[0], limits)
    if scan.brain_mask:
        mask, _ = load_volume(scan.brain_mask, limits)
        if mask.shape != data.shape:
            raise LayoutError(f"{scan.brain_mask}: brain mask of shape {mask.shape}, the scan's is {data.shape}")
        data = np.where(mask > 0, data, 0).astype(np.float32)
    return data, affine


@dataclass
class ResultStore:
    """The output folder's results: which scans are done, and new ones added in parts."""

    folder: Path
    rows: dict[str, list[dict]] = field(default_factory=lambda: {table: [] for table in TABLES})

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        for table in TABLES:
            (self.folder / table).mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """The cases already in ``verdicts`` or ``failed``. A slices part whose verdicts part is
        missing (a stop between the two writes) is removed: its scans are not done."""
        verdicts = {part.name for part in (self.folder / "verdicts").glob("*.parquet")}
        for part in (self.folder / "slices").glob("*.parquet"):
            if part.name not in verdicts:
                part.unlink()
        cases: set[str] = set()
        for table in ("verdicts", "failed"):
            for part in sorted((self.folder / table).glob("*.parquet")):
                cases.update(pq.read_table(part, columns=["case"]).column("case").to_pylist())
        return cases

    def add(self, case: str, path: str, result: dict | None, error: str | None = None) -> None:
        """A scan's result (as the predictor answers it) or the reason it failed."""
        if result is None:
            self.rows["failed"].append({"case": case, "path": path, "error": error})
            return
        model = result["model"]
        self.rows["verdicts"].append({
            "case": case, "path": path, "volume_score": result["volume_score"], "verdict": result["volume_verdict"],
            "volume_threshold": result["volume_threshold"], "slices_scored": result["slices_scored"],
            "slices_skipped": result["slices_skipped"], "model": model["name"], "version": model["version"],
            "detector": model["detector"], "site": result["site"]})
        self.rows["slices"] += [{"case": case, "index": s["index"], "score": s["score"], "verdict": s["verdict"]}
                                for s in result["slices"]]

    def pending(self) -> int:
        return len(self.rows["verdicts"]) + len(self.rows["failed"])

    def flush(self) -> None:
        """What was added since the last flush, as one new part a table, of one name; the slices
        are written before the verdicts, so a scan is never done without its slices."""
        name = f"part-{uuid.uuid4().hex[:12]}.parquet"
        for table in ("slices", "verdicts", "failed"):
            if self.rows[table]:
                with atomic_path(self.folder / table / name) as tmp:
                    pq.write_table(pa.Table.from_pylist(self.rows[table]), tmp)
                self.rows[table] = []
