"""IXI: ``IXI<nnn>-<site>-<nnnn>-{T1,T2,PD}.nii.gz`` (healthy, not skull-stripped), with an
optional brain mask per subject.

The images sit in the root, as IXI distributes them, or in ``<root>/images/``; ``_`` may stand
for the ``-`` before the contrast (``IXI012-HH-1211_T1.nii.gz``, as NiChart redistributes them).
A brain mask or label map is any other NIfTI file in the root or one folder down whose name
starts with the subject's id and names no other contrast (``brain-labels/IXI012-HH-1211_T1_DLMUSE.nii.gz``,
``masks/IXI012-HH-1211_mask.nii.gz``): voxels > 0 are brain, so a parcellation serves as it is.
It must be on the image's grid. Without one, preprocessing finds the head, skull included.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.data.layouts.base import LayoutError, Subject, modality_name, require_folder

CONTRASTS = {"t1": "T1", "t2": "T2"}
ALL_CONTRASTS = ("T1", "T2", "PD", "MRA", "DTI")
SUBJECT = r"IXI\d{3}-[A-Za-z]+-\d{4}"
FILE = re.compile(rf"^({SUBJECT})[-_]({'|'.join(ALL_CONTRASTS)})\.nii(\.gz)?$")
OTHER = re.compile(rf"^({SUBJECT})[-_.](.+?)\.nii(\.gz)?$")
IMAGE_FOLDER = "images"


def _folders(root: Path) -> list[Path]:
    """The root and the folders directly inside it (where images and masks may sit)."""
    root = Path(root)
    return [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]


def _images(root: Path) -> list[tuple[str, str, Path]]:
    """(subject, contrast, path) of every IXI image in the root or its images/ folder."""
    folders = [Path(root), Path(root) / IMAGE_FOLDER]
    return [(m.group(1), m.group(2), p) for folder in folders if folder.is_dir()
            for p in sorted(folder.iterdir()) if p.is_file() and (m := FILE.match(p.name))]


def looks_like_ixi(root: Path) -> bool:
    return bool(_images(root))


def _mask_candidates(root: Path, contrast: str) -> dict[str, list[Path]]:
    """Per subject, the NIfTI files that are not an image and name no contrast but ``contrast``."""
    found: dict[str, list[Path]] = {}
    for folder in _folders(root):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            match = OTHER.match(path.name)
            if not match or FILE.match(path.name):
                continue
            words = set(re.split(r"[-_.]", match.group(2).upper()))
            if words & set(ALL_CONTRASTS) - {contrast}:
                continue  # another contrast's mask: not on this image's grid
            found.setdefault(match.group(1), []).append(path)
    return found


def _mask(subject: str, candidates: list[Path]) -> Path | None:
    if len(candidates) > 1:
        names = ", ".join(str(p) for p in candidates)
        raise LayoutError(f"IXI subject {subject} has several brain masks ({names}): keep one, or move the others away")
    return candidates[0] if candidates else None


def read_ixi(root: Path, modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None) -> list[Subject]:
    """Each subject's image of ``modality``, with its brain mask where one is there. IXI files
    stand alone: a subject is either there or not, never incomplete."""
    contrast = modality_name("IXI", CONTRASTS, modality)
    wanted = [(subject, path) for subject, found, path in _images(require_folder(root, "IXI")) if found == contrast]
    if not wanted:
        raise LayoutError(f"no IXI {contrast} files (IXI<nnn>-<site>-<nnnn>-{contrast}.nii.gz) in {root} "
                          f"or {Path(root) / IMAGE_FOLDER}")
    masks = _mask_candidates(root, contrast)
    return [Subject(subject_id=subject, dataset="ixi", cohort=cohort, image=path, brain_mask=_mask(subject, masks.get(subject, [])))
            for subject, path in sorted(wanted)]
