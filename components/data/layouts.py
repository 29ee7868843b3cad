"""Dataset layouts: where each subject's image, brain mask and segmentation live on disk.

The same readers serve the embedded phantoms and real downloads, because the phantom generator
writes the exact folder and file names of the real releases:

- HCP 1200 (healthy):  ``<root>/<subject>/T1w/T2w_acpc_dc_restore_brain.nii.gz`` and
  ``<root>/<subject>/T1w/brainmask_fs.nii.gz``
- BraTS 2021 (tumour): ``<root>/BraTS2021_<5 digits>/BraTS2021_<5 digits>_{t1,t1ce,t2,flair,seg}.nii.gz``,
  seg labels 0 background, 1 necrotic core, 2 edema, 4 enhancing tumour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = (0, 1, 2, 4)
_BRATS_CASE = re.compile(r"^BraTS2021_\d{5}$")


class LayoutError(ValueError):
    """A dataset folder does not follow the expected layout; the message names what is missing."""


@dataclass(frozen=True)
class Subject:
    """One scan to preprocess: the image, and where known its brain mask and tumour labels."""

    subject_id: str
    dataset: str
    image: Path
    brain_mask: Path | None = None
    segmentation: Path | None = None


def hcp_path(root: Path, subject_id: str, name: str) -> Path:
    return Path(root) / subject_id / "T1w" / name


def brats_path(root: Path, case_id: str, suffix: str) -> Path:
    return Path(root) / case_id / f"{case_id}_{suffix}.nii.gz"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise LayoutError(f"missing file: {path}")
    return path


def _subfolders(root: Path, dataset: str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{dataset} root folder not found: {root} (set data.{dataset}_root in params.yaml)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LayoutError(f"{dataset} root folder {root} holds no subject folders")
    return folders


def read_hcp(root: Path, modality: str = "t2") -> list[Subject]:
    """HCP 1200 subjects under ``root`` (T2w by default, T1w with modality='t1')."""
    contrast = {"t1": "T1w", "t2": "T2w"}.get(modality.lower())
    if contrast is None:
        raise LayoutError(f"HCP has no modality {modality!r}; use 't1' or 't2'")
    subjects = []
    for folder in _subfolders(root, "hcp"):
        subjects.append(
            Subject(
                subject_id=folder.name,
                dataset="hcp",
                image=_require(hcp_path(root, folder.name, f"{contrast}_acpc_dc_restore_brain.nii.gz")),
                brain_mask=_require(hcp_path(root, folder.name, "brainmask_fs.nii.gz")),
            )
        )
    return subjects


def read_brats(root: Path, modality: str = "t2") -> list[Subject]:
    """BraTS 2021 cases under ``root``; the brain mask is the image's non-zero voxels."""
    if modality.lower() not in BRATS_MODALITIES:
        raise LayoutError(f"BraTS has no modality {modality!r}; choose one of {BRATS_MODALITIES}")
    subjects = []
    for folder in _subfolders(root, "brats"):
        if not _BRATS_CASE.match(folder.name):
            raise LayoutError(f"{folder} is not a BraTS 2021 case folder (BraTS2021_<5 digits>)")
        subjects.append(
            Subject(
                subject_id=folder.name,
                dataset="brats",
                image=_require(brats_path(root, folder.name, modality.lower())),
                segmentation=_require(brats_path(root, folder.name, "seg")),
            )
        )
    return subjects


LAYOUT_READERS: dict[str, Callable[[Path, str], list[Subject]]] = {
    "hcp": read_hcp,
    "brats": read_brats,
}
