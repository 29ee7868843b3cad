"""The documentation site builds with no warning (a broken link, a missing page or anchor fails
it), the README's links lead somewhere, and every picture shown is one `docs/make_figures.py` draws."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, venv_env

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_site_builds_in_strict_mode_without_a_warning(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          env={**venv_env(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = {page for entry in config["nav"] for page in entry.values()}
    assert listed == {page.name for page in DOCS.glob("*.md")}


def test_the_readmes_links_lead_to_files_and_headings():
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#([^)\s]+))?\)", readme):
        path, anchor = REPO / target[0], target[1]
        assert path.is_file(), f"the README links to {target[0]}, which is not there"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            slugs = {re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in headings}
            assert anchor in slugs, f"the README links to {target[0]}#{anchor}, a heading it does not have"


def drawn_figures() -> set[str]:
    """The names docs/make_figures.py draws (its FIGURES), read without importing its libraries."""
    tree = ast.parse((DOCS / "make_figures.py").read_text())
    (names,) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["FIGURES"]]
    return set(names)


def test_every_picture_shown_exists_and_has_the_command_that_draws_it():
    drawn = drawn_figures()
    for page in PAGES:
        for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            path = (page.parent / image).resolve()
            assert path.is_file(), f"{page.name} shows {image}, which is not there"
            assert path.parent == (DOCS / "images").resolve() and path.stem in drawn, \
                f"{page.name} shows {image}, which docs/make_figures.py does not draw"
