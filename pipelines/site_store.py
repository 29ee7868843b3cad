"""Site calibrations kept with a registered model version, so every replica and any fresh
deployment of that version finds them.

Each `brainomaly calibrate` is an MLflow run of its own ("calibrate <site>": the model version,
the scans, the target and the thresholds, with the ``Calibration`` as ``calibration.json``);
the version's tag ``brainomaly.sites`` maps each site to its latest calibration run and when it
ran (the registry UI shows it, and a replica that sees the tag change reloads the sites).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from components.models.bundle import Calibration

SITES_TAG = "brainomaly.sites"
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_site_name(site: str) -> str:
    if not SITE_NAME.match(site or ""):
        raise ValueError(f"site name {site!r}: use 1-63 lower-case letters, digits, '_' or '-', starting with a letter "
                         "or digit (it appears in URLs and metric labels)")
    return site


def sites_tag(client: MlflowClient, name: str, version: str) -> dict[str, dict]:
    """{site: {"run_id", "calibrated"}} of a registered version (empty when it has none)."""
    raw = client.get_model_version(name, version).tags.get(SITES_TAG)
    return json.loads(raw) if raw else {}


def store_site_calibration(client: MlflowClient, experiment_id: str, name: str, version: str, site: str,
                           calibration: Calibration, details: dict) -> str:
    """Log the calibration as its own run and point the version's tag at it; returns the run id."""
    check_site_name(site)
    run = client.create_run(experiment_id, run_name=f"calibrate {site}",
                            tags={"brainomaly.site": site, "brainomaly.model": f"{name}/{version}"})
    run_id = run.info.run_id
    for key, value in details.items():
        client.log_param(run_id, key, value)
    for key in ("slice_threshold", "volume_threshold", "pixel_threshold"):
        client.log_metric(run_id, key, getattr(calibration, key))
    client.log_dict(run_id, asdict(calibration), "calibration.json")
    client.set_terminated(run_id)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sites = sites_tag(client, name, version) | {site: {"run_id": run_id, "calibrated": stamp}}
    client.set_model_version_tag(name, version, SITES_TAG, json.dumps(dict(sorted(sites.items()))))
    return run_id


def load_site_calibrations(client: MlflowClient, name: str, version: str) -> dict[str, Calibration]:
    """Every site calibration the version's tag names, by site."""
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for site, where in sites_tag(client, name, version).items():
            path = mlflow.artifacts.download_artifacts(run_id=where["run_id"], artifact_path="calibration.json",
                                                       dst_path=str(Path(tmp) / site), tracking_uri=client.tracking_uri)
            found[site] = Calibration(**json.loads(Path(path).read_text()))
    return found
