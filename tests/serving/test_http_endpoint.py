"""The real endpoint: `brainomaly serve` (Ray Serve + HTTP) on the model `dvc repro` registered."""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from sklearn.metrics import roc_auc_score

from components.data.layouts import read_brats
from components.data.nifti_io import load_volume
from tests.conftest import free_port, venv_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(pipeline_repo):
    port = free_port()
    log = open(pipeline_repo / "serve.log", "w")
    command = [str(Path(sys.executable).parent / "brainomaly"), "serve", "--port", str(port)]
    process = subprocess.Popen(command, cwd=pipeline_repo, env=venv_env(), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited early:\n{(pipeline_repo / 'serve.log').read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:  # not listening yet, or the proxy up before the app
            pass
        time.sleep(1)
    else:
        pytest.fail(f"server not ready in time:\n{(pipeline_repo / 'serve.log').read_text()[-4000:]}")
    yield url
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def nifti(data, affine=np.eye(4)) -> bytes:
    return nib.Nifti1Image(data, affine).to_bytes()


def test_health(server):
    body = requests.get(f"{server}/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["model"] == "brainomaly-detector" and body["version"] == "1"


def test_tumour_slices_score_higher_than_clean_ones(server, pipeline_repo):
    """Over the 4 tumour volumes of the tiny population, through HTTP: slices with a tumour
    (> 20 pixels) outrank clean slices (no tumour, no other lesion), pooled and in most volumes.
    One small model on 7 healthy subjects, trained afresh each run: a single volume may tie, the
    pool must not. Within a volume this is harder than the evaluate stage's test split (clean
    slices from the same scan, edge slices included): pooled AUROC 0.74-0.77 over repeated runs."""
    labels, scores, separated = [], [], 0
    for case in read_brats(pipeline_repo / "data" / "raw" / "brats"):
        response = requests.post(f"{server}/v1/predict", data=case.image.read_bytes(), timeout=120)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["model"]["version"] == "1" and result["threshold"] > 0
        seg, _ = load_volume(case.segmentation)
        lesions, _ = load_volume(case.lesions)
        tumour, clean = [], []
        for entry in result["slices"]:
            pixels = (seg[:, :, entry["index"]] > 0).sum()  # BraTS is LPS: axis 2 is the file's own axial axis
            if pixels > 20:
                tumour.append(entry["score"])
            elif pixels == 0 and not lesions[:, :, entry["index"]].any():
                clean.append(entry["score"])
        assert tumour and clean
        separated += np.mean(tumour) > np.mean(clean)
        labels += [1] * len(tumour) + [0] * len(clean)
        scores += tumour + clean
    assert roc_auc_score(labels, scores) > 0.7
    assert separated >= 3


def test_multipart_and_uncompressed_uploads_agree(server, pipeline_repo):
    case = read_brats(pipeline_repo / "data" / "raw" / "brats")[0]
    raw = requests.post(f"{server}/v1/predict", data=case.image.read_bytes(), timeout=120).json()
    form = requests.post(f"{server}/v1/predict", files={"file": ("t2.nii.gz", case.image.read_bytes())}, timeout=120).json()
    plain = requests.post(f"{server}/v1/predict", data=gzip.decompress(case.image.read_bytes()), timeout=120).json()
    assert [s["score"] for s in raw["slices"]] == [s["score"] for s in form["slices"]] == [s["score"] for s in plain["slices"]]


def truncated_upload(pipeline_repo) -> bytes:
    return read_brats(pipeline_repo / "data" / "raw" / "brats")[0].image.read_bytes()[:5000]


@pytest.mark.parametrize(
    "make, status, message",
    [
        (lambda repo: b"this is a text file, not a scan" * 20, 400, "not a NIfTI"),
        (truncated_upload, 400, "truncated or corrupt"),
        (lambda repo: nifti(np.ones((16, 16), np.float32)), 400, "expected a 3-D volume"),
        (lambda repo: nifti(np.ones((8, 8, 8, 2, 2), np.float32)), 400, "expected a 3-D volume"),
        (lambda repo: nifti(np.full((16, 16, 16), np.nan, np.float32)), 400, "NaN or infinite"),
        (lambda repo: nifti(np.zeros((16, 16, 16), np.float32)), 400, "the image is constant"),
        (lambda repo: nifti(np.pad(np.ones((3, 3, 3), np.float32), 8)), 400, "fewer than 100 brain voxels"),
        (lambda repo: os.urandom(3 * 2**20), 413, "exceeds"),
        (lambda repo: b"", 400, "empty body"),
    ],
    ids=["not-nifti", "truncated-gzip", "2d", "5d", "nan", "constant", "tiny-brain", "too-large", "empty"],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, pipeline_repo, make, status, message):
    response = requests.post(f"{server}/v1/predict", data=make(pipeline_repo), timeout=60)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert requests.get(f"{server}/healthz", timeout=10).status_code == 200


def test_multipart_without_a_file_is_refused(server):
    response = requests.post(f"{server}/v1/predict", files={"note": (None, "no file here")}, timeout=30)
    assert response.status_code == 400 and "no file part" in response.json()["error"]


def test_prometheus_metrics(server, pipeline_repo):
    case = read_brats(pipeline_repo / "data" / "raw" / "brats")[0]
    requests.post(f"{server}/v1/predict", data=case.image.read_bytes(), timeout=120)
    requests.post(f"{server}/v1/predict", data=b"garbage" * 100, timeout=30)
    text = requests.get(f"{server}/metrics", timeout=10).text
    assert 'brainomaly_requests_total{route="/v1/predict",status="200"}' in text
    assert 'brainomaly_requests_total{route="/v1/predict",status="400"}' in text
    assert "brainomaly_request_latency_seconds_bucket" in text
    assert 'brainomaly_model_info{name="brainomaly-detector",version="1"} 1.0' in text
    count = next(line for line in text.splitlines() if line.startswith("brainomaly_slice_score_count"))
    assert float(count.split()[-1]) > 0
