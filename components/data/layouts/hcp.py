"""HCP 1200: ``<root>/<subject>/T1w/{T1w,T2w}_acpc_dc_restore_brain.nii.gz`` and
``<root>/<subject>/T1w/brainmask_fs.nii.gz`` (skull-stripped, with FreeSurfer's brain mask)."""

from __future__ import annotations

from pathlib import Path

from components.data.layouts.base import Subject, each_case, modality_name, require_file, require_folder

CONTRASTS = {"t1": "T1w", "t2": "T2w"}


def hcp_path(root: Path, subject_id: str, name: str) -> Path:
    return Path(root) / subject_id / "T1w" / name


def looks_like_hcp(root: Path) -> bool:
    return any(Path(root).glob("*/T1w/*_acpc_dc_restore_brain.nii.gz"))


def read_hcp(root: Path, modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None) -> list[Subject]:
    contrast = modality_name("HCP", CONTRASTS, modality)
    folders = sorted(p for p in require_folder(root, "HCP").iterdir() if p.is_dir() and not p.name.startswith("."))
    return each_case(folders, lambda folder: Subject(
        subject_id=folder.name, dataset="hcp", cohort=cohort,
        image=require_file(hcp_path(root, folder.name, f"{contrast}_acpc_dc_restore_brain.nii.gz")),
        brain_mask=require_file(hcp_path(root, folder.name, "brainmask_fs.nii.gz")),
    ), incomplete)
