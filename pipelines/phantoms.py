"""Stage `phantoms`: write the embedded default data (synthetic HCP and BraTS subjects)."""

from __future__ import annotations

import shutil
from pathlib import Path

from components.atomic import write_text
from components.data.phantoms import generate_phantoms
from pipelines.params import Params

MARKER = ".brainomaly-phantoms"


def clear_phantom_folder(root: Path) -> None:
    """Empty a folder this stage wrote before; refuse to touch one it did not (real data)."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise ValueError(f"{root} holds files that are not phantoms; set phantoms.*_root to another folder")
    shutil.rmtree(root, ignore_errors=True)  # a stale subject must not survive a smaller count


def run(params: Params) -> dict:
    hcp_root, brats_root = params.path(params.phantoms.hcp_root), params.path(params.phantoms.brats_root)
    for root in (hcp_root, brats_root):
        clear_phantom_folder(root)
    summary = generate_phantoms(hcp_root, brats_root, params.phantoms.spec, workers=params.phantoms.workers)
    for root in (hcp_root, brats_root):
        write_text(root / MARKER, "written by `brainomaly phantoms`; safe to delete\n")
    return {"hcp_root": str(hcp_root), "brats_root": str(brats_root), **summary}
