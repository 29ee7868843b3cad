"""Registered detector versions in MLflow: resolve ``models:/<name>@<alias>`` or
``models:/<name>/<version>`` and download the version's bundle folder. Used by the endpoint, by
`brainomaly calibrate` and by the benchmarks, so every one of them scores the version the
registry names."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ModelNotFoundError(LookupError):
    """No model answers to the URI in this tracking store."""


def fetch_bundle(model_uri: str, tracking_uri: str, destination: Path) -> tuple[Path, str, str]:
    """Download the model; returns (bundle folder, registered name, version)."""
    name, version = resolve_version(model_uri, tracking_uri)
    try:
        # Download from the version's storage location: a models:/ URI would be resolved
        # against MLflow's process-wide registry, not the store named here.
        source = registry_client(tracking_uri).get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination))
    except MlflowException as err:
        raise ModelNotFoundError(f"cannot download {model_uri} from {tracking_uri}: {err.message}") from err
    bundle = Path(local) / "artifacts" / "bundle"
    if not bundle.is_dir():
        raise ModelNotFoundError(f"{model_uri} is not a Brainomaly detector (no artifacts/bundle inside)")
    return bundle, name, version


def resolve_version(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/name@alias`` or ``models:/name/version`` in that store."""
    client = registry_client(tracking_uri)
    if match := _ALIAS_URI.match(model_uri):
        try:
            found = client.get_model_version_by_alias(match["name"], match["alias"])
        except MlflowException as err:
            raise ModelNotFoundError(
                f"no model version has alias {match['alias']!r} under {match['name']!r}: run `brainomaly register` first"
            ) from err
        return found.name, str(found.version)
    if match := _VERSION_URI.match(model_uri):
        return match["name"], match["version"]
    raise ModelNotFoundError(f"model URI {model_uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
