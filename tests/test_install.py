"""Reproducible installs: `make install` installs requirements.lock's exact versions, the
lock satisfies pyproject.toml's ranges, the ranges keep known-broken versions out, and the
virtualenv's programs find each other unactivated."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def pins() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def declared() -> list[Requirement]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_this_environment_was_installed_from_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differing = {name: (version, installed.get(name)) for name, version in pins().items() if installed.get(name) != version}
    assert not differing, f"installed versions differ from requirements.lock (run `make install`): {differing}"


def test_the_lock_meets_the_declared_ranges():
    locked = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":  # pinned by the Makefile, its build (CPU or CUDA) chosen there
            continue
        assert name in locked, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} breaks {requirement}"


def test_floors_keep_known_problems_out():
    floors = {canonicalize_name(r.name): r.specifier for r in declared()}
    for name, broken in {"torch": "2.5.1", "python-multipart": "0.0.17", "pyarrow": "14.0.0", "requests": "2.32.3",
                         "starlette": "0.39.2", "fastapi": "0.115.2"}.items():
        assert not floors[name].contains(broken), f"{name} {broken} is still allowed"


def test_the_makefile_installs_from_the_lock():
    make = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert re.search(r"pip install .*-c requirements\.lock .*-e", make), make


def test_every_torch_load_is_weights_only():
    sources = [p for folder in ("components", "pipelines", "serving", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    loads = [(p, line) for p in sources for line in p.read_text().splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for _, line in loads), [str(p) for p, line in loads
                                                                             if "weights_only=True" not in line]


def test_the_virtualenv_puts_its_programs_first_on_path_as_activating_it_does():
    """So `.venv/bin/dvc repro` from a shell that never activated it finds dvc.yaml's `brainomaly`."""
    found = subprocess.run([sys.executable, "-c", "import shutil; print(shutil.which('brainomaly'))"],
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout.strip()
    assert found == str(Path(sys.executable).parent / "brainomaly"), "run `make install` (it writes the .pth file)"
