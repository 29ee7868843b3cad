"""Stage `phantoms`: write the embedded default data: synthetic HCP and BraTS training subjects,
and every site's scans of the held-out subjects (<sites_root>/<site>/{healthy,tumour})."""

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
    settings = params.phantoms
    roots = [params.path(settings.hcp_root), params.path(settings.brats_root), params.path(settings.sites_root)]
    for root in roots:
        clear_phantom_folder(root)
    summary = generate_phantoms(*roots[:2], settings.spec, workers=settings.workers, sites_root=roots[2])
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        write_text(root / MARKER, "written by `brainomaly phantoms`; safe to delete\n")
    return {"hcp_root": str(roots[0]), "brats_root": str(roots[1]), "sites_root": str(roots[2]), **summary}
