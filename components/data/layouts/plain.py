"""A plain folder of scans: every ``*.nii`` / ``*.nii.gz`` directly inside is one subject, of the
modality the caller says it is (the file names carry no convention to check). Checked last by
layout detection, so a release's own layout always wins."""

from __future__ import annotations

from pathlib import Path

from components.data.layouts.base import LayoutError, Subject, require_folder

SUFFIXES = (".nii.gz", ".nii")


def _scans(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith("."))


def looks_like_plain(root: Path) -> bool:
    return bool(_scans(root))


def read_plain(root: Path, modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None) -> list[Subject]:
    scans = _scans(require_folder(root, "scans"))
    if not scans:
        raise LayoutError(f"no .nii or .nii.gz files in {root}")
    stem = {p: p.name.removesuffix(".gz").removesuffix(".nii") for p in scans}
    return [Subject(subject_id=stem[p], dataset="plain", cohort=cohort, image=p) for p in scans]
