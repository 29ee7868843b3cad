"""A registered detector version as the endpoint holds it: loaded into memory with its site calibrations."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from pipelines.model_store import fetch_bundle, registry_client
from pipelines.site_store import load_site_calibrations, site_records
from components.scoring.predictor import VolumePredictor


def load_predictor(name: str, version: str, tracking_uri: str) -> VolumePredictor:
    """The registered version, downloaded to a temporary folder and loaded into memory (on a GPU
    when this process sees one: Ray shows a replica the GPUs ``serve.num_gpus`` gave it), with
    its site calibrations."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, _, _ = fetch_bundle(f"models:/{name}/{version}", tracking_uri, Path(tmp))
        return with_sites(VolumePredictor.from_folder(folder, name, version, device="auto"), tracking_uri)


def sites_changed(predictor: VolumePredictor, tracking_uri: str) -> bool:
    """Whether the registry holds other site calibrations for the predictor's version than it has."""
    return site_records(registry_client(tracking_uri), predictor.model_name, predictor.model_version) != predictor.sites_stamp


def with_sites(predictor: VolumePredictor, tracking_uri: str) -> VolumePredictor:
    """The predictor with its version's site calibrations as the registry holds them now; a site
    whose calibration cannot be loaded is kept aside with the reason (its requests get 503, the
    others are served)."""
    client = registry_client(tracking_uri)
    records = site_records(client, predictor.model_name, predictor.model_version)
    sites, broken = load_site_calibrations(client, predictor.model_name, predictor.model_version, records)
    return replace(predictor, sites=sites, broken_sites=broken, sites_stamp=records)
