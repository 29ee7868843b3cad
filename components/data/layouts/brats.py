"""BraTS releases: skull-stripped, co-registered, 1 mm, with tumour labels.

- 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` where the case folders
  (``Brats18_*``, ``BraTS19_*``, ``BraTS20_Training_*``, ``BraTS2021_*``) sit in the root or one
  level down (the ``HGG/`` and ``LGG/`` folders of 2018 and 2019); labels 0, 1, 2, 4.
- 2023+: ``BraTS-<TASK>-<5 digits>-<3 digits>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; labels 0-3.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.data.layouts.base import (
    LayoutError, Subject, each_case, modality_name, nifti, require_file, require_folder,
)

LABELS = (0, 1, 2, 4)
LABELS_2023 = (0, 1, 2, 3)
SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
SUFFIXES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
CASE_2023 = re.compile(r"^BraTS-[A-Z]+-\d{5}-\d{3}$")


def brats_path(root: Path, case_id: str, suffix: str) -> Path:
    """Where BraTS 2021 keeps one file of a case (the layout the phantoms are written in)."""
    return Path(root) / case_id / f"{case_id}_{suffix}.nii.gz"


def _is_case(folder: Path) -> bool:
    return folder.is_dir() and any(nifti(folder, f"{folder.name}_{s}").is_file() for s in (*SUFFIXES, "seg"))


def case_folders(root: Path) -> list[Path]:
    """Case folders in ``root`` or one level down (HGG/, LGG/), sorted by name."""
    root = Path(root)
    found = [p for p in root.iterdir() if _is_case(p)] if root.is_dir() else []
    for group in (p for p in root.iterdir() if p.is_dir() and not _is_case(p)) if root.is_dir() else []:
        found += [p for p in group.iterdir() if _is_case(p)]
    return sorted(found, key=lambda p: p.name)


def looks_like_brats(root: Path) -> bool:
    return bool(case_folders(root))


def looks_like_brats2023(root: Path) -> bool:
    return any(CASE_2023.match(p.name) for p in Path(root).iterdir() if p.is_dir())


def _labelled_case(case: Path, dataset: str, cohort: str, separator: str, suffix: str) -> Subject:
    lesions = nifti(case, f"{case.name}{separator}lesions")  # optional: other lesion kinds, phantoms only
    return Subject(
        subject_id=case.name, dataset=dataset, cohort=cohort,
        image=require_file(nifti(case, f"{case.name}{separator}{suffix}")),
        segmentation=require_file(nifti(case, f"{case.name}{separator}seg")),
        lesions=lesions if lesions.is_file() else None,
    )


def read_brats(root: Path, modality: str = "t2", cohort: str = "tumour", incomplete: list | None = None) -> list[Subject]:
    suffix = modality_name("BraTS", SUFFIXES, modality)
    cases = case_folders(require_folder(root, "BraTS"))
    if not cases:
        raise LayoutError(f"no BraTS case folders (<case>/<case>_t2.nii.gz) in {root}")
    return each_case(cases, lambda case: _labelled_case(case, "brats", cohort, "_", suffix), incomplete)


def read_brats2023(root: Path, modality: str = "t2", cohort: str = "tumour", incomplete: list | None = None) -> list[Subject]:
    suffix = modality_name("BraTS 2023", SUFFIXES_2023, modality)
    cases = sorted(p for p in require_folder(root, "BraTS 2023").iterdir() if p.is_dir() and CASE_2023.match(p.name))
    if not cases:
        raise LayoutError(f"no BraTS 2023 case folders (BraTS-<TASK>-<5 digits>-<3 digits>) in {root}")
    return each_case(cases, lambda case: _labelled_case(case, "brats2023", cohort, "-", suffix), incomplete)
