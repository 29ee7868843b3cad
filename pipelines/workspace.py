"""Workspaces: a folder under artifacts/ that looks like the project to the stages (a params.yaml
that differs in a few settings, links to the processed data and dvc.lock), so `compare` and
`tune` can run the ordinary `train`, `evaluate` and `register` stages for a variant without
touching the project's own outputs. Stages run in fresh processes against the project's MLflow
store."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from components.atomic import write_text
from pipelines import tracking
from pipelines.errors import StageError
from pipelines.params import Params, with_overrides
from pipelines.preprocess import PROCESSED_DIR
from pipelines.site_store import SITES_FILE

# dvc.lock: the data version `register` records; sites.yaml: the sites it calibrates each new version for
LINKED = (PROCESSED_DIR, Path("dvc.lock"), SITES_FILE)


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested mappings key by key."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        result[key] = merged(result.get(key) or {}, value) if isinstance(value, dict) else value
    return result


def create(params: Params, folder: Path, changes: dict, linked: tuple[Path, ...] = LINKED) -> Path:
    """``folder`` with a params.yaml (the project's with ``changes`` merged in) and the ``linked``
    paths of the project (a variant that preprocesses its own data leaves PROCESSED_DIR out)."""
    folder = params.path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = with_overrides(yaml.safe_load(params.path(params.source).read_text()), params.overrides)
    variant = merged(project, changes)
    for key in ("healthy_root", "tumour_root", "sites_root"):  # absolute, so they resolve from the workspace too
        variant["data"][key] = str(params.path(variant["data"][key]))
    write_text(folder / "params.yaml", yaml.safe_dump(variant, sort_keys=False))
    for relative in linked:
        link, target = folder / relative, params.path(relative)
        if target.exists() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=target.is_dir())
    return folder


def run_stage(stage: str, folder: Path, params: Params) -> float:
    """Run one stage in a workspace, in a fresh process, against the project's MLflow store;
    its seconds, or a StageError carrying the stage's own one-line message."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(params)}
    command = [sys.executable, "-m", "pipelines.cli", stage, "--params", str(folder / "params.yaml")]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=params.root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.startswith(f"brainomaly {stage}:")]
        raise StageError(f"{stage} of {folder.name} failed: {' '.join(said) or result.stderr[-3000:]}")
    return time.perf_counter() - start
