"""The README's and the documentation's commands work as typed in the virtualenv they tell the
reader to enter: every `brainomaly`, `dvc`, `mlflow`, `python benchmarks/...`, `python docs/...`
and `make` command they show (in shell blocks and inline code) exists, and knows every option it
is shown with (its --help)."""

import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import REPO, venv_env

PROGRAMS = ("brainomaly", "dvc", "mlflow", "python", "make")  # the others (curl, prometheus, pip) are the reader's own
SUBCOMMAND = re.compile(r"[a-z][a-z-]*$")


def shown_commands(readme: str) -> list[str]:
    """The shell blocks' lines (comments dropped, continuations joined) and the inline code
    spans, that start with one of PROGRAMS."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        lines += [line.split(" #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]  # a span may wrap a line
    commands = []
    for line in lines:
        choices = re.fullmatch(r"(\S+) ([a-z-]+(?: \| [a-z-]+)+)", line)  # `brainomaly phantoms | preprocess | ...`
        commands += [f"{choices[1]} {c}" for c in choices[2].split(" | ")] if choices else [line]
    return [c for c in commands if c.split(" ")[0] in PROGRAMS and " " in c]


def help_and_options(commands: list[str]) -> dict[tuple[str, ...], set[str]]:
    """Each command's --help invocation (program and subcommands), with the options shown for it."""
    found: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for command in commands:
        words = [w for w in shlex.split(command.replace("[", " ").replace("]", " ")) if w != "..."]
        if words[0] == "python" and not words[1].startswith(("benchmarks/", "docs/")):
            continue
        head = [words[0]]
        for word in words[1:]:
            if not (SUBCOMMAND.match(word) or word.startswith(("benchmarks/", "docs/"))) or words[0] == "make" and len(head) > 1:
                break
            head.append(word)
        found[tuple(head)] |= {w.split("=")[0] for w in words[len(head):] if w.startswith("-")}
    return found


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHOWN = help_and_options(shown_commands("\n".join(page.read_text() for page in PAGES)))


def test_the_readme_shows_the_commands_it_is_checked_on():
    assert {("dvc", "repro"), ("dvc", "exp", "run"), ("brainomaly", "serve"), ("make", "run")} <= set(SHOWN)
    assert any(head[0] == "python" for head in SHOWN)


def help_text(head: tuple[str, ...]) -> str:
    """``head --help`` as the reader would get it: the CLI and the benchmarks in this process (one
    import of their libraries), the other programs from the virtualenv."""
    if head[0] == "brainomaly":
        from typer.testing import CliRunner

        from pipelines.cli import app

        result = CliRunner().invoke(app, [*head[1:], "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        return result.output
    if head[0] == "python":
        script, shown = REPO / head[1], io.StringIO()
        with mock.patch.object(sys, "argv", [str(script), "--help"]), contextlib.redirect_stdout(shown):
            with pytest.raises(SystemExit) as ended:
                runpy.run_path(str(script), run_name="__main__")
        assert ended.value.code in (0, None), shown.getvalue()
        return shown.getvalue()
    done = subprocess.run([str(Path(sys.executable).parent / head[0]), *head[1:], "--help"], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"`{' '.join(head)} --help` failed:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.parametrize("head", sorted(SHOWN), ids=" ".join)
def test_a_readme_command_exists_and_knows_its_options(head):
    if head[0] == "make":
        assert re.search(rf"^{re.escape(head[1])}:", (REPO / "Makefile").read_text(), re.M), f"no make target {head[1]}"
        return
    shown = help_text(head)
    unknown = [o for o in SHOWN[head] if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", shown)]
    assert not unknown, f"the docs show `{' '.join(head)}` with {unknown}, which its --help does not list"
