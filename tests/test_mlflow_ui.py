"""The reviewer's view: a real MLflow UI server on the pipeline's registry, opened in headless
Chromium (Debian's package), shows the registered model, its description and its `champion` alias."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from serving.local_server import free_port
from tests.conftest import venv_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.program("chromium", "chromium-browser", package="chromium"),
]
# as a headless root process on a machine with no outside network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def mlflow_ui(pipeline_repo):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    with open(pipeline_repo / "mlflow-ui.log", "w") as log:
        server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{pipeline_repo / 'mlflow.db'}",
                                   "--host", "127.0.0.1", "--port", str(port)], cwd=pipeline_repo, env=venv_env(),
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(1)
            else:
                pytest.fail(f"MLflow UI not up:\n{(pipeline_repo / 'mlflow-ui.log').read_text()[-3000:]}")
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def rendered_page(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran and its API calls came back."""
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


def test_the_registry_page_shows_the_model_and_its_champion_alias(mlflow_ui, tmp_path):
    page = rendered_page(f"{mlflow_ui}/#/models/brainomaly-detector", tmp_path / "profile")
    assert "brainomaly-detector" in page, page[-2000:]
    # the alias tag the UI draws on the model version, "@ champion"
    assert 'title="champion"' in page and "@&nbsp;champion" in page, "no champion alias tag on the model's page"
    assert "moves to a new version only when the promotion gate" in page, "the model's description is not shown"
