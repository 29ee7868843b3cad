"""IXI: one flat folder of ``IXI<nnn>-<site>-<nnnn>-{T1,T2,PD}.nii.gz`` (healthy, not skull-stripped)."""

from __future__ import annotations

import re
from pathlib import Path

from components.data.layouts.base import LayoutError, Subject, modality_name, require_folder

CONTRASTS = {"t1": "T1", "t2": "T2"}
FILE = re.compile(r"^(IXI\d{3}-[A-Za-z]+-\d{4})-(T1|T2|PD|MRA|DTI)\.nii(\.gz)?$")


def looks_like_ixi(root: Path) -> bool:
    return any(FILE.match(p.name) for p in Path(root).iterdir() if p.is_file())


def read_ixi(root: Path, modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None) -> list[Subject]:
    """IXI files stand alone: a subject is either there or not, never incomplete."""
    contrast = modality_name("IXI", CONTRASTS, modality)
    files = [(m.group(1), p) for p in require_folder(root, "IXI").iterdir() if (m := FILE.match(p.name))]
    wanted = sorted((subject, p) for subject, p in files if FILE.match(p.name).group(2) == contrast)
    if not wanted:
        raise LayoutError(f"no IXI {contrast} files (IXI<nnn>-<site>-<nnnn>-{contrast}.nii.gz) in {root}")
    return [Subject(subject_id=subject, dataset="ixi", cohort=cohort, image=path) for subject, path in wanted]
