"""Shared fixtures: tiny phantom data, made once per session, and a tiny params file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# YAML and the phantoms are imported where used: the GPU tests run on a bare GPU machine that has
# PyTorch and pytest, not the project's other dependencies (benchmarks/gpu_check.py).

REPO = Path(__file__).resolve().parents[1]
# Set by .ci/run: there a service test whose program is missing fails instead of skipping.
REQUIRE_PROGRAMS = os.environ.get("BRAINOMALY_REQUIRE_PROGRAMS") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.program(name, ..., package=...)``: the test needs one of these programs
    (a Debian package's); where none is installed it skips, saying which, or fails in CI.
    ``@pytest.mark.gpu``: the test needs a CUDA device, and skips without one."""
    for mark in item.iter_markers("program"):
        if not any(shutil.which(name) for name in mark.args):
            message = f"{mark.args[0]} not installed (Debian package {mark.kwargs['package']}; .ci/run installs it)"
            if REQUIRE_PROGRAMS:
                pytest.fail(f"{message}, and BRAINOMALY_REQUIRE_PROGRAMS=1 requires it", pytrace=False)
            pytest.skip(message)
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device (benchmarks/gpu_check.py runs these tests where there is one)")

# Small enough for seconds per stage on 2 cores, large enough to train a detector that works.
# Tumours of 10-30 mm: the one val and one test tumour subject of this tiny population must hold
# abnormal slices, or the data gate rightly stops the pipeline.
TINY_PARAMS = {
    "phantoms": {"n_healthy": 10, "n_tumour": 4, "test_healthy": 8, "test_tumour": 2, "voxel_size_mm": 3.0, "seed": 11,
                 "tumour_radius_mm": [10.0, 30.0]},
    "calibrate": {"healthy_scans": 4, "min_scans": 4},
    "evaluate": {"bootstrap_samples": 100},
    "preprocess": {"size": 32, "tumour_split": None},
    "model": {"name": "spatial_vae", "spatial_vae": {"base_channels": 16, "latent_channels": 32, "downsamplings": 3, "kl_weight": 0.01}},
    "train": {"epochs": 30, "batch_size": 32, "num_workers": 2, "learning_rate": 0.002},
    "serve": {"max_upload_mb": 2, "drift": {"window": 200, "min_scores": 20}},
}


def tiny_params_dict() -> dict:
    """The repo's params.yaml with TINY_PARAMS merged over it."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    return params


def write_params(folder: Path, name: str = "params.yaml", **overrides: dict) -> Path:
    params = tiny_params_dict()
    for section, values in overrides.items():
        params[section].update(values)
    path = Path(folder) / name
    import yaml

    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def phantom_roots(tmp_path_factory) -> tuple[Path, Path]:
    """(hcp_root, brats_root) of a tiny phantom population in the real layouts."""
    root = tmp_path_factory.mktemp("phantoms")
    from components.data.phantoms import PhantomSpec, generate_phantoms

    spec = PhantomSpec(n_healthy=4, n_tumour=3, voxel_size_mm=3.0, seed=5, tumour_radius_mm=(10.0, 30.0))
    generate_phantoms(root / "hcp", root / "brats", spec)
    return root / "hcp", root / "brats"


@pytest.fixture(scope="session")
def processed_project(tmp_path_factory, phantom_roots) -> Path:
    """A project folder whose params point at the tiny phantoms, with `preprocess` already run."""
    from pipelines import preprocess
    from pipelines.params import load_params

    folder = tmp_path_factory.mktemp("project")
    hcp_root, brats_root = phantom_roots
    params = load_params(write_params(folder, data={"healthy_root": str(hcp_root), "tumour_root": str(brats_root)}))
    preprocess.run(params)
    return folder


def venv_env() -> dict:
    """The environment for subprocesses: this interpreter's bin first on PATH (dvc, brainomaly)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# Under pytest-timeout's 900 s (pyproject.toml), whose stack dump would hide the command's output.
COMMAND_TIMEOUT_S = 840


def run_command(command: list[str], cwd: Path, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """A command of the virtualenv's, output captured; past ``timeout`` the test fails showing
    the output so far."""
    try:
        return subprocess.run(command, cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        said = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                       for part in (err.stdout or "", err.stderr or ""))
        pytest.fail(f"`{' '.join(command)}` ran past {timeout:g} s:\n{said[-5000:]}", pytrace=False)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> Path:
    """A copy of this repository with tiny params on which `dvc repro` has run end to end."""
    repo = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith("tests/"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    write_params(repo)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny pipeline"], cwd=repo, check=True)
    result = run_command(["dvc", "repro"], repo)
    (repo / "repro.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"dvc repro failed:\n{(result.stdout + result.stderr)[-5000:]}"
    return repo
