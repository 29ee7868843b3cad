"""The endpoint guards itself and follows the registry: an API key, 503s over capacity, a
broken version that never replaces the serving one, and a moved alias swapped in while
requests keep being answered. Its own server, on a copy of the pipeline's registry."""

import gzip
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import nibabel as nib
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

from components.data.layouts import read_brats, read_hcp
from components.models.bundle import DESCRIPTION, bundle_digests
from serving.local_server import running_server
from tests.conftest import venv_env, write_params
from tests.serving.scrape import metric

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "s3cret-test-key"}
PREFIX = "/brainomaly"  # behind a reverse proxy's path: the key must guard every route all the same
UPLOAD_TIMEOUT_S = 4
NAME, ALIAS = "brainomaly-detector", "champion"


@pytest.fixture(scope="module")
def project(pipeline_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle")
    shutil.copy2(pipeline_repo / "mlflow.db", folder / "mlflow.db")  # artifacts stay where they are
    write_params(folder, serve={"max_upload_mb": 8, "max_axis": 4096, "registry_poll_s": 1, "max_ongoing_requests": 1, "max_queued_requests": 1,
                                "route_prefix": PREFIX, "upload_timeout_s": UPLOAD_TIMEOUT_S})
    return folder


@pytest.fixture(scope="module")
def server(project):
    with running_server(project, env={**venv_env(), "BRAINOMALY_API_KEY": KEY["X-API-Key"]}, route_prefix=PREFIX) as url:
        yield url


@pytest.fixture(scope="module")
def scan(pipeline_repo) -> bytes:
    return read_brats(pipeline_repo / "data" / "raw" / "brats")[0].image.read_bytes()


@pytest.fixture(scope="module")
def long_scan(pipeline_repo) -> bytes:
    """Each axial slice of the scan repeated 40 times, in slices 40 times thinner: thousands of
    slices, seconds of work, and still one brain's volume (a skull-stripped scan, not a head).
    Repeats lie side by side, so the upload stays small."""
    image = nib.load(read_brats(pipeline_repo / "data" / "raw" / "brats")[0].image)
    data = np.repeat(np.asanyarray(image.dataobj), 40, axis=2)
    return gzip.compress(nib.Nifti1Image(data, image.affine @ np.diag([1, 1, 1 / 40, 1])).to_bytes(), compresslevel=1)


@pytest.fixture(scope="module")
def registry(project) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def request_head(server: str, length: int) -> bytes:
    """A prediction request's line and headers, for a client that sends its body by hand."""
    return (f"POST {PREFIX}/v1/predict HTTP/1.1\r\nHost: {urlparse(server).netloc}\r\n"
            f"X-API-Key: {KEY['X-API-Key']}\r\nContent-Length: {length}\r\n\r\n").encode()


def test_the_api_key_guards_every_route_but_the_probes(server, scan):
    assert server.endswith(PREFIX)
    assert requests.post(f"{server}/v1/predict", data=scan, timeout=60).status_code == 401
    wrong = requests.get(f"{server}/v1/model", headers={"X-API-Key": "nope"}, timeout=10)
    assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["error"]
    assert requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120).status_code == 200
    for route in ("/docs", "/openapi.json", "/v2/predict", "/"):  # denied by default, not only /v1/*
        assert requests.get(f"{server}{route}", timeout=10).status_code == 401, route
    assert requests.get(f"{server}/openapi.json", headers=KEY, timeout=10).status_code == 200
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(f"{server}{probe}", timeout=10).status_code == 200, probe


def test_over_capacity_the_endpoint_answers_503_at_once(server, scan):
    def post(_):
        start = time.monotonic()
        response = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=300)
        return response.status_code, time.monotonic() - start

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))  # 1 at work + 1 queued is the capacity
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 503}, statuses
    # at once: before the upload is read, so faster than any scan scored on the same loaded machine
    assert max(seconds for status, seconds in answers if status == 503) < min(seconds for status, seconds in answers if status == 200)
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200


def test_slow_uploads_cannot_lock_out_a_normal_client(server, scan):
    """Twelve clients that send a few bytes of their upload and then stall: they hold the slots
    they got only until the upload deadline, then a normal client is served."""
    address, head = urlparse(server), request_head(server, len(scan))
    stalled = [socket.create_connection((address.hostname, address.port), timeout=60) for _ in range(12)]
    try:
        for connection in stalled:
            connection.sendall(head + scan[:100])
        start = time.monotonic()
        status = None
        while status != 200 and time.monotonic() - start < UPLOAD_TIMEOUT_S + 20:
            status = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120).status_code
            time.sleep(0.5)
        assert status == 200 and time.monotonic() - start < UPLOAD_TIMEOUT_S + 20
        answers = [connection.recv(64) for connection in stalled]
        assert all(b" 408 " in a or b" 503 " in a for a in answers), answers  # cut at the deadline, or turned away
        assert any(b" 408 " in a for a in answers), answers
    finally:
        for connection in stalled:
            connection.close()


def wait_until_idle(server: str, seconds: float = 120) -> None:
    """Until no prediction holds a slot: an earlier test's work must not take this one's."""
    deadline = time.monotonic() + seconds
    while metric(server, "brainomaly_predictions_in_progress") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "brainomaly_predictions_in_progress") == 0


def answered(connection: socket.socket) -> bytes:
    """What the server has answered on ``connection`` so far, without waiting or consuming it (a
    socket with a timeout waits for data before any recv, MSG_DONTWAIT or not: select first)."""
    readable, _, _ = select.select([connection], [], [], 0)
    return connection.recv(64, socket.MSG_PEEK) if readable else b""


def drop_at_the_model(server: str, scan: bytes, count: int, tries: int = 3) -> float:
    """``count`` clients send ``scan`` and hang up once every one's work is at the model; the
    slices scored before they sent it. An upload answered before it got there (a loaded machine
    missing the upload deadline) is a retry, with the answer named if every try ends so."""
    address, head = urlparse(server), request_head(server, len(scan))
    at_model, early = 'brainomaly_predictions_in_progress{stage="model"}', []
    for _ in range(tries):
        wait_until_idle(server)
        scored_before = metric(server, "brainomaly_slice_score_count")
        dropped = [socket.create_connection((address.hostname, address.port), timeout=60) for _ in range(count)]
        for connection in dropped:
            connection.sendall(head + scan)
        deadline = time.monotonic() + 60
        while metric(server, at_model) < count and time.monotonic() < deadline:
            early = [a.split(b"\r\n")[0] for a in map(answered, dropped) if a]
            if early:
                break
            time.sleep(0.02)
        reached = not early and metric(server, at_model) == count
        for connection in dropped:
            connection.close()
        if reached:
            return scored_before
    pytest.fail(f"{count} uploads never reached the model together in {tries} tries; the last answers: {early}")


def test_a_client_that_hangs_up_keeps_its_slot_until_its_work_stops(server, scan, long_scan):
    """Two clients fill the capacity with long scans and hang up while those are at the model. A
    thread cannot be cancelled, so that work goes on; their slots must stay taken until it has
    stopped: by the time a third client is served, both dropped scans have been scored to the
    end (their scores counted). A slot freed at the hang-up would let drop-and-retry stack work."""
    long_slices = len(requests.post(f"{server}/v1/predict", data=long_scan, headers=KEY, timeout=300).json()["slices"])
    capacity = int(metric(server, "brainomaly_prediction_capacity"))
    scored_before = drop_at_the_model(server, long_scan, capacity)
    assert metric(server, "brainomaly_slice_score_count") < scored_before + capacity * long_slices  # still at work
    status, deadline = None, time.monotonic() + 300
    while status != 200 and time.monotonic() < deadline:
        status = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120).status_code
        assert status in (200, 503), status
    assert status == 200
    # served only after both dropped scans were scored in full: their scores were told to the
    # monitor before their slots were given back
    assert metric(server, "brainomaly_slice_score_count") >= scored_before + capacity * long_slices
    assert metric(server, "brainomaly_predictions_in_progress") == 0


def test_a_broken_version_leaves_the_old_one_serving_and_raises_the_alert_metric(server, registry, scan, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "README").write_text("no bundle here")
    broken = registry.create_model_version(NAME, source=(tmp_path / "not-a-model").as_uri())
    registry.set_registered_model_alias(NAME, ALIAS, broken.version)
    deadline = time.monotonic() + 60
    while metric(server, "brainomaly_model_load_failed ") < 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert metric(server, "brainomaly_model_load_failed ") == 1
    assert metric(server, "brainomaly_model_load_failures_total") >= 1
    answer = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120)
    assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
    model = requests.get(f"{server}/v1/model", headers=KEY, timeout=10).json()
    assert model["version"] == "1" and f"version {broken.version}" in model["last_load_error"]
    assert str(tmp_path) not in model["last_load_error"]  # the reason, with its paths and URIs, stays in the log


def successor_of_version_1(registry: MlflowClient, folder: Path, slice_threshold: float) -> str:
    """A new version that answers differently: version 1's artifacts with another slice
    threshold, registered by location (a models:/ source would be looked up in MLflow's
    process-wide store, not this copy) with the digests of what it holds."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=registry.get_model_version_download_uri(NAME, "1"),
                                                     dst_path=str(folder)))
    bundle = local / "artifacts" / "bundle"
    description = json.loads((bundle / DESCRIPTION).read_text())
    description["calibration"]["slice_threshold"] = slice_threshold
    (bundle / DESCRIPTION).write_text(json.dumps(description))
    return str(registry.create_model_version(NAME, source=local.as_uri(), tags=bundle_digests(bundle)).version)


def test_a_moved_alias_is_swapped_in_without_dropping_requests(server, registry, scan, tmp_path):
    first = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120).json()
    assert first["model"]["version"] == "1"
    new = successor_of_version_1(registry, tmp_path, slice_threshold=first["threshold"] + 1.0)
    answers: list[tuple[str, float]] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_asking():
        try:
            while not done.is_set():
                response = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:300]}")
                    return
                answer = response.json()
                answers.append((answer["model"]["version"], answer["threshold"]))
        except Exception as err:  # anything the client meets is a failure of the swap
            failures.append(repr(err))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        time.sleep(2)
        registry.set_registered_model_alias(NAME, ALIAS, new)
        deadline = time.monotonic() + 90
        while not any(version == new for version, _ in answers) and time.monotonic() < deadline and not failures:
            time.sleep(0.5)
        time.sleep(2)
    finally:
        done.set()
        client.join(timeout=120)
    assert not failures and not client.is_alive(), failures
    versions = [version for version, _ in answers]
    assert versions[0] == "1" and versions[-1] == new and sorted(versions, key=int) == versions  # no way back
    # each answer comes from the version it names: the successor's threshold from the swap on
    assert {threshold for version, threshold in answers if version == "1"} == {first["threshold"]}
    assert {threshold for version, threshold in answers if version == new} == {first["threshold"] + 1.0}
    assert metric(server, "brainomaly_model_load_failed ") == 0
    assert f'version="{new}"' in requests.get(f"{server}/metrics", timeout=10).text


def test_a_site_calibrated_while_serving_is_applied_by_name(server, project, pipeline_repo, scan, tmp_path):
    unknown = requests.post(f"{server}/v1/predict?site=elsewhere", data=scan, headers=KEY, timeout=120)
    assert unknown.status_code == 400 and "unknown site 'elsewhere'" in unknown.json()["error"]
    assert requests.post(f"{server}/v1/predict?site=Not%20a%20site", data=scan, headers=KEY, timeout=60).status_code == 400
    # The new site's healthy scans as a plain folder of files (no layout, no masks).
    for subject in read_hcp(pipeline_repo / "data" / "raw" / "sites" / "other_vendor" / "healthy"):
        shutil.copy(subject.image, tmp_path / f"{subject.subject_id}.nii.gz")
    command = [str(Path(sys.executable).parent / "brainomaly"), "calibrate", "--site", "elsewhere", "--healthy", str(tmp_path)]
    done = subprocess.run(command, cwd=project, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    deadline = time.monotonic() + 60  # replicas poll the registry every second here
    while time.monotonic() < deadline:
        model = requests.get(f"{server}/v1/model", headers=KEY, timeout=10).json()
        if "elsewhere" in model["sites"]:
            break
        time.sleep(1)
    site = model["sites"]["elsewhere"]
    assert site["reference_scores"] > 10 and site["slice_threshold"] != model["slice_threshold"]
    at_site = requests.post(f"{server}/v1/predict?site=elsewhere", data=scan, headers=KEY, timeout=120).json()
    default = requests.post(f"{server}/v1/predict", data=scan, headers=KEY, timeout=120).json()
    assert at_site["site"] == "elsewhere" and at_site["threshold"] == site["slice_threshold"]
    assert default["site"] is None and default["threshold"] == model["slice_threshold"]
    assert [s["score"] for s in at_site["slices"]] == [s["score"] for s in default["slices"]]  # one model, two calibrations
    text = requests.get(f"{server}/metrics", timeout=10).text
    assert f'brainomaly_slice_threshold{{site="elsewhere"}} {site["slice_threshold"]}' in text
    assert metric(server, 'brainomaly_drift_window{site="elsewhere"}') == len(at_site["slices"])


@pytest.fixture(scope="module")
def site_scans(pipeline_repo, tmp_path_factory) -> Path:
    """A site's healthy scans as a plain folder of files (no layout, no masks)."""
    folder = tmp_path_factory.mktemp("site_scans")
    for subject in read_hcp(pipeline_repo / "data" / "raw" / "sites" / "other_vendor" / "healthy"):
        shutil.copy(subject.image, folder / f"{subject.subject_id}.nii.gz")
    return folder


def calibrate_command(site: str, healthy: Path, *flags: str) -> list[str]:
    return [str(Path(sys.executable).parent / "brainomaly"), "calibrate", "--site", site, "--healthy", str(healthy), *flags]


def test_calibrate_with_too_few_scans_says_what_they_guarantee_and_stops(project, registry, site_scans, tmp_path):
    for name in sorted(p.name for p in site_scans.iterdir())[:2]:
        shutil.copy(site_scans / name, tmp_path / name)
    champion = registry.get_model_version_by_alias(NAME, ALIAS).version
    refused = subprocess.run(calibrate_command("tiny_clinic", tmp_path), cwd=project, env=venv_env(), capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())
    assert "2 healthy scans can guarantee at best 33.3% of healthy volumes flagged" in said, said
    assert "5% needs 19 scans" in said and "calibrate.min_scans is 4" in said and "--allow-few-scans" in said
    assert "brainomaly.site.tiny_clinic" not in registry.get_model_version(NAME, champion).tags
    allowed = subprocess.run(calibrate_command("tiny_clinic", tmp_path, "--allow-few-scans"), cwd=project, env=venv_env(),
                             capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    record = json.loads(registry.get_model_version(NAME, champion).tags["brainomaly.site.tiny_clinic"])
    assert record["scans"] == 2 and record["guaranteed_rates"]["volume"] == pytest.approx(1 / 3, abs=1e-6)


def test_two_calibrations_at_once_keep_both(project, registry, site_scans):
    champion = registry.get_model_version_by_alias(NAME, ALIAS).version
    runs = [subprocess.Popen(calibrate_command(site, site_scans), cwd=project, env=venv_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for site in ("north", "south")]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    tags = registry.get_model_version(NAME, champion).tags
    assert {"brainomaly.site.north", "brainomaly.site.south"} <= set(tags)
    assert json.loads(tags["brainomaly.site.north"])["run_id"] != json.loads(tags["brainomaly.site.south"])["run_id"]
    import yaml

    listed = yaml.safe_load((project / "sites.yaml").read_text())["sites"]
    assert {"north", "south"} <= set(listed) and listed["north"]["healthy"] == str(site_scans.resolve())


def wait_for_site(server: str, site: str, present: bool = True) -> dict:
    deadline = time.monotonic() + 60  # replicas poll the registry every second here
    while time.monotonic() < deadline:
        sites = requests.get(f"{server}/v1/sites", headers=KEY, timeout=10).json()
        if (site in {s["site"] for s in sites["sites"]}) == present:
            return sites
        time.sleep(1)
    raise AssertionError(f"/v1/sites never {'showed' if present else 'dropped'} {site}: {sites}")


def test_a_broken_site_calibration_fails_only_that_site(server, registry, scan):
    champion = registry.get_model_version_by_alias(NAME, ALIAS).version
    wait_for_site(server, "north")
    registry.set_model_version_tag(NAME, champion, "brainomaly.site.ghost",
                                   json.dumps({"run_id": "0" * 32, "calibrated": "2026-01-01T00:00:00Z"}))
    sites = {s["site"]: s for s in wait_for_site(server, "ghost")["sites"]}
    assert sites["ghost"]["status"] == "unavailable" and "could not be loaded" in sites["ghost"]["error"]
    assert sites["north"]["status"] == "calibrated" and sites["north"]["scans"] >= 4
    assert sites["north"]["guaranteed_false_alarm_rates"]["volume"] <= 1 / 5 and sites["north"]["calibrated"]
    ghost = requests.post(f"{server}/v1/predict?site=ghost", data=scan, headers=KEY, timeout=120)
    assert ghost.status_code == 503 and "'ghost' is calibrated for this model" in ghost.json()["error"]
    for site in ("north", None):
        answer = requests.post(f"{server}/v1/predict", params={"site": site} if site else {}, data=scan, headers=KEY,
                               timeout=120)
        assert answer.status_code == 200 and answer.json()["site"] == site
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200
    registry.delete_model_version_tag(NAME, champion, "brainomaly.site.ghost")
    wait_for_site(server, "ghost", present=False)


PIPELINE_OUTPUTS = ("models/detector", "models/calibration.json", "models/test_scores.parquet", "models/evaluation.json",
                    "reports/evaluation.json", "data/processed/preprocess_spec.json", "dvc.lock")


def test_a_calibrated_site_is_answered_across_a_promotion(server, project, pipeline_repo, registry, scan):
    """`register` calibrates every listed site for the new version before the alias moves: a
    client asking at a site throughout sees the old version, then the new, and no error. The
    champion is the successor registered by hand above, with no metric to compare: the
    pipeline's model, registered again, takes over."""
    for name in PIPELINE_OUTPUTS:  # the pipeline's model, registered again from this project
        source, target = pipeline_repo / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    before = str(registry.get_model_version_by_alias(NAME, ALIAS).version)
    answers, failures, done = [], [], threading.Event()

    def keep_asking():
        while not done.is_set():
            try:
                response = requests.post(f"{server}/v1/predict?site=north", data=scan, headers=KEY, timeout=120)
            except Exception as err:  # anything the client meets is a failure of the swap
                failures.append(repr(err))
                return
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:300]}")
                return
            answers.append((response.json()["model"]["version"], response.json()["threshold"]))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        registered = subprocess.run([str(Path(sys.executable).parent / "brainomaly"), "register"], cwd=project,
                                    env=venv_env(), capture_output=True, text=True, timeout=600)
        report = json.loads((project / "reports" / "registration.json").read_text())
        deadline = time.monotonic() + 60
        while not any(version == report["version"] for version, _ in answers) and time.monotonic() < deadline \
                and not failures:
            time.sleep(0.5)
        time.sleep(1)
    finally:
        done.set()
        client.join(timeout=120)
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert report["promoted"] and all(report["sites"][s]["calibrated"] for s in ("north", "south", "tiny_clinic"))
    assert not failures and not client.is_alive(), failures
    versions = [version for version, _ in answers]
    assert versions[0] == before and versions[-1] == report["version"], versions
    record = json.loads(registry.get_model_version(NAME, report["version"]).tags["brainomaly.site.north"])
    assert record["scans"] >= 4
