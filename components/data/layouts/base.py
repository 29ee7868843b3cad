"""What every layout reader returns, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

# The modality names used in params.yaml; each layout maps them to its own file names.
MODALITIES = ("t1", "t1ce", "t2", "flair")


class LayoutError(ValueError):
    """A dataset folder does not follow the expected layout; the message names what is missing."""


@dataclass(frozen=True)
class Subject:
    """One scan to preprocess: the image, and where known its brain mask and tumour labels.

    ``dataset`` is the layout it was read with (hcp, brats, brats2023, ixi, bids); ``cohort`` is
    its role in the pipeline: 'healthy' scans train the detector, 'tumour' scans evaluate it.
    ``lesions`` labels other, non-tumour lesions where a dataset has them (the phantoms'
    ``<case>_lesions.nii.gz``); real BraTS has none.
    """

    subject_id: str
    dataset: str
    image: Path
    cohort: str = "healthy"
    brain_mask: Path | None = None
    segmentation: Path | None = None
    lesions: Path | None = None


def require_folder(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{what} folder not found: {root} (set it in params.yaml, section data)")
    return root


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise LayoutError(f"missing file: {path}")
    return path


def each_case(cases: Iterable[Path], build: Callable[[Path], Subject], incomplete: list | None) -> list[Subject]:
    """``build`` every case. A case with a missing file raises, or, when an ``incomplete`` list is
    given, is recorded there as {"subject", "error"} and left out."""
    subjects = []
    for case in cases:
        try:
            subjects.append(build(case))
        except LayoutError as err:
            if incomplete is None:
                raise
            incomplete.append({"subject": case.name, "error": str(err)})
    return subjects


def nifti(folder: Path, stem: str) -> Path:
    """``folder/stem.nii.gz``, or ``stem.nii`` where only the uncompressed file exists."""
    gz = Path(folder) / f"{stem}.nii.gz"
    plain = Path(folder) / f"{stem}.nii"
    return plain if plain.is_file() and not gz.is_file() else gz


def modality_name(layout: str, names: dict[str, str], modality: str) -> str:
    """The layout's own name for ``modality``, or a clear error listing what it has."""
    if modality.lower() not in names:
        raise LayoutError(f"{layout} has no modality {modality!r}; choose one of {sorted(names)}")
    return names[modality.lower()]
