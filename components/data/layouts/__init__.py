"""Dataset layouts: where each subject's image, brain mask and segmentation live on disk.

One module per release format; ``read_dataset`` picks the reader by name or detects it. The
same readers serve the embedded phantoms and real downloads, because the phantom generator
writes the exact folder and file names of the real releases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from components.data.layouts.base import MODALITIES, LayoutError, Subject, require_folder
from components.data.layouts.bids import looks_like_bids, read_bids
from components.data.layouts.brats import LABELS as BRATS_LABELS
from components.data.layouts.brats import brats_path, looks_like_brats, looks_like_brats2023, read_brats, read_brats2023
from components.data.layouts.hcp import hcp_path, looks_like_hcp, read_hcp
from components.data.layouts.ixi import looks_like_ixi, read_ixi
from components.data.layouts.plain import looks_like_plain, read_plain

# Checked in this order by detect_layout: the most specific signature first.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[..., list[Subject]]]] = {
    "hcp": (looks_like_hcp, read_hcp),
    "brats2023": (looks_like_brats2023, read_brats2023),
    "brats": (looks_like_brats, read_brats),
    "ixi": (looks_like_ixi, read_ixi),
    "bids": (looks_like_bids, read_bids),
    "plain": (looks_like_plain, read_plain),  # any folder of .nii / .nii.gz files: last
}

__all__ = [
    "BRATS_LABELS", "LAYOUTS", "MODALITIES", "LayoutError", "Subject", "brats_path", "detect_layout",
    "hcp_path", "read_brats", "read_dataset", "read_hcp",
]


def detect_layout(root: Path) -> str:
    """The name of the layout ``root`` follows, or a LayoutError listing the ones known."""
    root = require_folder(root, "dataset")
    for name, (looks_like, _) in LAYOUTS.items():
        if looks_like(root):
            return name
    raise LayoutError(
        f"cannot tell the layout of {root}: expected one of {', '.join(LAYOUTS)} "
        "(see components/data/layouts/), or name it in params.yaml"
    )


def read_dataset(
    root: Path, layout: str = "auto", modality: str = "t2", cohort: str = "healthy", incomplete: list | None = None
) -> list[Subject]:
    """Every subject under ``root``, read with ``layout`` ('auto' detects it).

    A case with a missing file raises LayoutError naming it, or, when an ``incomplete`` list is
    given, is appended there ({"subject", "error"}) and the others are returned.
    """
    name = detect_layout(root) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose auto or one of {sorted(LAYOUTS)}")
    return LAYOUTS[name][1](Path(root), modality, cohort, incomplete)
