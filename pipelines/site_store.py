"""Sites: the list of them in the project, and their calibrations kept with each registered model version.

The list is ``sites.yaml`` at the project root (versioned with the code): each site's name, the
folder of its healthy calibration scans, and the content hash of those scans when the site was
added (``brainomaly calibrate --site NAME --healthy DIR`` adds or updates one; delete an entry to
forget a site). `register` calibrates every listed site for each new version before its alias
can move, so a site outlives any one model.

Each calibration is an MLflow run of its own ("calibrate <site>": the model version, the scans,
the target and the thresholds, with the ``Calibration`` as ``calibration.json``). The version
holds one tag per site, ``brainomaly.site.<name>``, naming that run, when it ran, its scan count
and guaranteed rates: two calibrations of different sites at once write different tags, so
neither is lost, and the registry UI shows every site of a version.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from components.atomic import write_text
from components.models.calibration import Calibration

SITES_FILE = Path("sites.yaml")
SITE_TAG_PREFIX = "brainomaly.site."
LEGACY_SITES_TAG = "brainomaly.sites"  # one JSON tag for all sites, as versions registered before kept them
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SITES_HEADER = """\
# The sites the endpoint knows: each one's healthy calibration scans (a folder, in any supported
# layout or plain .nii/.nii.gz files) and their content hash when the site was added.
# `brainomaly calibrate --site NAME --healthy DIR` adds or updates a site; delete its entry to
# forget it. Every model `brainomaly register` registers is calibrated for each site listed here
# before the alias can move to it (docs/sites.md "Sites").
"""


def check_site_name(site: str) -> str:
    if not SITE_NAME.match(site or ""):
        raise ValueError(f"site name {site!r}: use 1-63 lower-case letters, digits, '_' or '-', starting with a letter "
                         "or digit (it appears in URLs and metric labels)")
    return site


def scans_fingerprint(folder: Path) -> str:
    """SHA-256 over the folder's files (relative path and bytes): which version of a site's scans calibrated it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def read_sites(path: Path) -> dict[str, dict]:
    """{site: {"healthy", "scans_sha256", "added"}} of a sites file (empty when there is none)."""
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    sites = raw.get("sites") or {}
    if not isinstance(sites, dict) or not all(isinstance(v, dict) and "healthy" in v for v in sites.values()):
        raise ValueError(f"{path}: expected `sites: {{NAME: {{healthy: FOLDER}}, ...}}`")
    for name in sites:
        check_site_name(name)
    return sites


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path``: concurrent `calibrate` runs update the sites file one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_site(path: Path, site: str, healthy: Path) -> dict:
    """List (or update) ``site`` in the sites file with its scans' folder and fingerprint; returns its entry."""
    check_site_name(site)
    entry = {"healthy": str(Path(healthy).resolve()), "scans_sha256": scans_fingerprint(healthy),
             "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with _locked(path):
        sites = read_sites(path) | {site: entry}
        write_text(path, SITES_HEADER + yaml.safe_dump({"sites": dict(sorted(sites.items()))}, sort_keys=False))
    return entry


def site_records(client: MlflowClient, name: str, version: str) -> dict[str, dict]:
    """{site: {"run_id", "calibrated", ...}} of a registered version (empty when it has none)."""
    tags = client.get_model_version(name, version).tags
    records = json.loads(tags[LEGACY_SITES_TAG]) if LEGACY_SITES_TAG in tags else {}
    for key, value in tags.items():
        if key.startswith(SITE_TAG_PREFIX):
            records[key[len(SITE_TAG_PREFIX):]] = json.loads(value)
    return dict(sorted(records.items()))


def store_site_calibration(client: MlflowClient, experiment_id: str, name: str, version: str, site: str,
                           calibration: Calibration, details: dict) -> str:
    """Log the calibration as its own run and point the version's tag for the site at it; returns the run id."""
    check_site_name(site)
    run = client.create_run(experiment_id, run_name=f"calibrate {site}",
                            tags={"brainomaly.site": site, "brainomaly.model": f"{name}/{version}"})
    run_id = run.info.run_id
    for key, value in details.items():
        client.log_param(run_id, key, value)
    for key in ("slice_threshold", "volume_threshold", "pixel_threshold"):
        client.log_metric(run_id, key, getattr(calibration, key))
    for kind, rate in calibration.guaranteed_rates.items():
        client.log_metric(run_id, f"guaranteed_{kind}_false_alarm_rate", rate)
    client.log_dict(run_id, asdict(calibration), "calibration.json")
    client.set_terminated(run_id)
    record = {"run_id": run_id, "calibrated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "scans": calibration.scans, "guaranteed_rates": calibration.guaranteed_rates}
    client.set_model_version_tag(name, version, f"{SITE_TAG_PREFIX}{site}", json.dumps(record))
    return run_id


def load_site_calibrations(client: MlflowClient, name: str, version: str,
                           records: dict[str, dict] | None = None) -> tuple[dict[str, Calibration], dict[str, str]]:
    """Every site calibration the version's tags name: (by site, the calibrations that loaded;
    by site, why the others did not). One site's broken calibration costs that site alone."""
    found, broken = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for site, where in (site_records(client, name, version) if records is None else records).items():
            try:
                path = mlflow.artifacts.download_artifacts(run_id=where["run_id"], artifact_path="calibration.json",
                                                           dst_path=str(Path(tmp) / site), tracking_uri=client.tracking_uri)
                found[site] = Calibration(**json.loads(Path(path).read_text()))
            except Exception as err:  # a missing run or artifact, a corrupt file: this site only
                broken[site] = f"its calibration (run {where.get('run_id')}) could not be loaded ({type(err).__name__})"
    return found, broken
