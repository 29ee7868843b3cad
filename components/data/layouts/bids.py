"""BIDS: ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<entity>-<label>...]_<suffix>.nii.gz``
with suffix T1w, T2w or FLAIR. One subject per (subject, session); the first run is used."""

from __future__ import annotations

import re
from pathlib import Path

from components.data.layouts.base import LayoutError, Subject, modality_name, require_folder

SUFFIXES = {"t1": "T1w", "t2": "T2w", "flair": "FLAIR"}
_ENTITIES = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?(?:_[a-z]+-[A-Za-z0-9]+)*_([A-Za-z0-9]+)\.nii(\.gz)?$")


def looks_like_bids(root: Path) -> bool:
    root = Path(root)
    return (root / "dataset_description.json").is_file() or any(root.glob("sub-*/anat")) or any(root.glob("sub-*/ses-*/anat"))


def read_bids(root: Path, modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None) -> list[Subject]:
    """A subject without the modality's image is simply not listed (BIDS sessions vary)."""
    suffix = modality_name("BIDS", SUFFIXES, modality)
    root = require_folder(root, "BIDS")
    images: dict[str, Path] = {}
    for path in sorted([*root.glob("sub-*/anat/*.nii*"), *root.glob("sub-*/ses-*/anat/*.nii*")]):
        match = _ENTITIES.match(path.name)
        if match and match.group(3) == suffix:
            images.setdefault("_".join(filter(None, match.group(1, 2))), path)
    if not images:
        raise LayoutError(f"no BIDS *_{suffix}.nii.gz images under {root}/sub-*/[ses-*/]anat/")
    return [Subject(subject_id=key, dataset="bids", cohort=cohort, image=path) for key, path in sorted(images.items())]
