"""Site calibrations kept with a registered model version, so every replica and any fresh
deployment of that version finds them.

Each calibration is a JSON artifact ``sites/<site>.json`` (a ``Calibration``) of the version's
run; the version's tag ``brainomaly.sites`` lists the sites and when each was calibrated (the
registry UI shows it, and a replica that sees the tag change reloads them).
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


def sites_tag(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """{site: when it was calibrated} of a registered version (empty when it has none)."""
    raw = client.get_model_version(name, version).tags.get(SITES_TAG)
    return json.loads(raw) if raw else {}


def store_site_calibration(client: MlflowClient, name: str, version: str, site: str, calibration: Calibration) -> None:
    run_id = client.get_model_version(name, version).run_id
    client.log_dict(run_id, asdict(calibration), f"sites/{check_site_name(site)}.json")
    stamps = sites_tag(client, name, version) | {site: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    client.set_model_version_tag(name, version, SITES_TAG, json.dumps(dict(sorted(stamps.items()))))


def load_site_calibrations(client: MlflowClient, name: str, version: str) -> dict[str, Calibration]:
    """Every site calibration stored with the version, by site."""
    sites = sites_tag(client, name, version)
    if not sites:
        return {}
    run_id = client.get_model_version(name, version).run_id
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for site in sites:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"sites/{site}.json", dst_path=tmp,
                                                       tracking_uri=client.tracking_uri)
            found[site] = Calibration(**json.loads(Path(path).read_text()))
    return found
