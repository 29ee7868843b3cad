"""`brainomaly pacs-watch` against a real Orthanc (Debian's package) and the real endpoint."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests

from components.data.dicom_io import volume_to_series
from components.data.layouts import read_brats
from components.data.nifti_io import load_volume
from serving.local_server import free_port, running_server
from tests.conftest import venv_env, write_params

ORTHANC = ("Orthanc", "/usr/sbin/Orthanc")  # Debian's package puts it in sbin, off a user's PATH
pytestmark = [pytest.mark.slow, pytest.mark.program(*ORTHANC, package="orthanc")]
BRAINOMALY = str(Path(sys.executable).parent / "brainomaly")


@contextlib.contextmanager
def orthanc(folder: Path, port: int | None = None):
    """An Orthanc on loopback storing under ``folder`` (a restart on the same folder and port
    finds what it held); yields its URL."""
    port = port or free_port()
    config = {"Name": "brainomaly-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "StableAge": 1, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": []}
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "a") as log:
        program = next(filter(None, map(shutil.which, ORTHANC)))
        process = subprocess.Popen([program, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/system", timeout=1).ok:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def store(pacs: str, files: list[bytes]) -> str:
    """The files stored into the PACS; the Orthanc ID of their series."""
    for data in files:
        stored = requests.post(f"{pacs}/instances", data=data, timeout=30)
        stored.raise_for_status()
    return stored.json()["ParentSeries"]


def retagged(files: list[bytes], **tags) -> list[bytes]:
    out = []
    for data in files:
        image = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in tags.items():
            setattr(image, keyword, value)
        buffer = io.BytesIO()
        image.save_as(buffer)
        out.append(buffer.getvalue())
    return out


def segmentations_of(pacs: str, series_id: str) -> list[pydicom.Dataset]:
    """The SEG instances in the series' study that reference it."""
    source = requests.get(f"{pacs}/series/{series_id}", timeout=10).json()
    found = []
    for series in requests.get(f"{pacs}/studies/{source['ParentStudy']}/series", timeout=10).json():
        if series["MainDicomTags"].get("Modality") == "SEG":
            for instance in series["Instances"]:
                seg = pydicom.dcmread(io.BytesIO(requests.get(f"{pacs}/instances/{instance}/file", timeout=10).content))
                if seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source["MainDicomTags"]["SeriesInstanceUID"]:
                    found.append(seg)
    return found


def watch(project: Path, *options: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([BRAINOMALY, "pacs-watch", "--params", "params-pacs.yaml", *options], cwd=project,
                          env=venv_env(), capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def endpoint(pipeline_repo):
    with running_server(pipeline_repo, env=venv_env()) as url:
        yield url


def cases(pipeline_repo, count=2) -> list[list[bytes]]:
    return [volume_to_series(*load_volume(case.image), series_number=number)
            for number, case in enumerate(read_brats(pipeline_repo / "data" / "raw" / "brats")[:count], 1)]


def test_each_new_brain_series_gets_a_seg_in_its_study_and_no_series_is_scored_twice(endpoint, pipeline_repo, tmp_path):
    brain, other = cases(pipeline_repo)
    with orthanc(tmp_path) as pacs:
        write_params(pipeline_repo, "params-pacs.yaml", pacs={
            "url": pacs, "endpoint": endpoint, "from_start": True, "poll_s": 0.5,
            "state_file": str(tmp_path / "watch.json")})
        scored = store(pacs, brain)
        store(pacs, retagged(other, BodyPartExamined="KNEE", SeriesNumber=2))
        store(pacs, retagged(other, Modality="CT", SeriesNumber=3, SeriesInstanceUID=pydicom.uid.generate_uid()))
        store(pacs, retagged(other[:20] + other[21:], SeriesNumber=4, SeriesInstanceUID=pydicom.uid.generate_uid()))
        time.sleep(2)  # StableAge: Orthanc announces each series a second after its last image
        first = watch(pipeline_repo, "--once")
        assert first.returncode == 0, first.stderr[-3000:]
        assert json.loads(first.stdout) == {"scored": 1, "skipped": 3, "done before": 0}, first.stderr[-3000:]
        for reason in ("body part KNEE", "modality CT, not MR", "gap(s) wider than the usual"):
            assert reason in first.stderr
        (seg,) = segmentations_of(pacs, scored)
        source = pydicom.dcmread(io.BytesIO(brain[0]))
        assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        volume = hd.seg.Segmentation.from_dataset(seg).get_volume(combine_segments=True)
        assert volume.spatial_shape[0] == len(brain)  # a frame for every image of the series

        time.sleep(2)  # the SEG stored is a new series in the feed too, stable a second later
        again = watch(pipeline_repo, "--once")  # goes on from where the state file says: only the SEG is new
        assert json.loads(again.stdout) == {"scored": 0, "skipped": 1, "done before": 0}, again.stderr[-3000:]
        assert "(series 9000): skipped (modality SEG, not MR)" in again.stderr
        (tmp_path / "watch.json").unlink()  # a start that lost its state still scores nothing twice
        lost = watch(pipeline_repo, "--once")
        assert json.loads(lost.stdout) == {"scored": 0, "skipped": 4, "done before": 1}, lost.stderr[-3000:]
        assert len(segmentations_of(pacs, scored)) == 1


def test_the_watcher_rides_out_a_pacs_restart(endpoint, pipeline_repo, tmp_path):
    first, second = cases(pipeline_repo)
    port = free_port()
    write_params(pipeline_repo, "params-pacs.yaml", pacs={
        "url": f"http://127.0.0.1:{port}", "endpoint": endpoint, "from_start": True, "poll_s": 0.5,
        "state_file": str(tmp_path / "watch.json")})
    with open(tmp_path / "watch.log", "w") as log:
        watcher = subprocess.Popen([BRAINOMALY, "pacs-watch", "--params", "params-pacs.yaml"], cwd=pipeline_repo,
                                   env=venv_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        with orthanc(tmp_path, port) as pacs:
            before = store(pacs, first)
            wait_for(lambda: segmentations_of(pacs, before), tmp_path / "watch.log")
        time.sleep(2)  # the PACS is down: the watcher retries
        with orthanc(tmp_path, port) as pacs:
            after = store(pacs, second)
            wait_for(lambda: segmentations_of(pacs, after), tmp_path / "watch.log")
            assert len(segmentations_of(pacs, before)) == 1
        assert watcher.poll() is None, (tmp_path / "watch.log").read_text()[-3000:]
        assert "unreachable" in (tmp_path / "watch.log").read_text()
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)


def wait_for(found, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found():
            return
        time.sleep(0.5)
    raise AssertionError(f"no SEG within {seconds} s:\n{log.read_text()[-3000:]}")
