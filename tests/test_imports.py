"""The code's imports run one way. components/ sees neither pipelines/ nor serving/, nor Ray,
MLflow or DVC; pipelines/ never imports serving/ (its CLI, pipelines/cli.py, is the one place
that sees both); and no modules import each other around a circle, nor do components'
subpackages. Every import counts: at the top, inside a function, or under TYPE_CHECKING."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("components", "pipelines", "serving")
RUNTIMES = ("ray", "mlflow", "dvc")  # what components/ runs without


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def imported(name: str) -> set[str]:
    """Every module ``name`` imports: the project's by their module name, others by their top package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in MODULES and "." in target and target.split(".")[0] in PACKAGES:
                target = target.rpartition(".")[0]
            found.add(target if target.split(".")[0] in PACKAGES else target.split(".")[0])
    return found - {name}


IMPORTS = {name: imported(name) for name in MODULES}


def subpackage(name: str) -> str:
    """components.data.layouts.hcp -> components.data; components.atomic stays itself."""
    return ".".join(name.split(".")[:2])


def test_components_import_neither_the_adapters_nor_ray_mlflow_or_dvc():
    upward = {name: sorted(i for i in found if i.split(".")[0] in ("pipelines", "serving", *RUNTIMES))
              for name, found in IMPORTS.items() if name.startswith("components")}
    assert not {name: found for name, found in upward.items() if found}


def test_pipelines_never_import_serving_but_in_the_cli():
    found = {name: sorted(i for i in imports if i.startswith("serving"))
             for name, imports in IMPORTS.items() if name.startswith("pipelines") and name != "pipelines.cli"}
    assert not {name: imports for name, imports in found.items() if imports}


@pytest.mark.parametrize("graph", ["modules", "components' subpackages"])
def test_no_circle(graph):
    if graph == "modules":
        edges = {name: {i for i in found if i in MODULES} for name, found in IMPORTS.items()}
    else:
        edges = {}
        for name, found in IMPORTS.items():
            if name.startswith("components."):
                edges.setdefault(subpackage(name), set()).update(
                    subpackage(i) for i in found if i.startswith("components.") and subpackage(i) != subpackage(name))
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as circle:
        pytest.fail(f"a circle of imports: {' -> '.join(circle.args[1])}")


def test_the_checks_see_a_circle_and_an_upward_import():
    """The graph above is read right: known imports are in it (a check that finds nothing must be able to)."""
    assert "components.models.bundle" in IMPORTS["serving.model_source"] | IMPORTS["pipelines.model_store"]
    assert "torch" in IMPORTS["components.models.bundle"]
    with pytest.raises(CycleError):
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
