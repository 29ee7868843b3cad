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

from components.models.bundle import bundle_digests

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
DIGEST_TAGS = ("weights_sha256", "bundle_sha256")  # what `register` records of each version


class ModelNotFoundError(LookupError):
    """No model answers to the URI in this tracking store."""


class ModelIntegrityError(ModelNotFoundError):
    """A version answers, but its files are not the ones registered (or cannot be checked)."""


def champion(client: MlflowClient, name: str, alias: str):
    """The version the alias points at, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


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
    verify(bundle, registry_client(tracking_uri).get_model_version(name, version).tags, f"{name} version {version}")
    return bundle, name, version


def verify(bundle: Path, tags: dict, label: str) -> None:
    """Refuse a bundle whose digests differ from those recorded at registration, or that has none."""
    recorded = {key: tags.get(key) for key in DIGEST_TAGS}
    if None in recorded.values():
        raise ModelIntegrityError(f"{label} carries no {' / '.join(DIGEST_TAGS)} tags to check it against: "
                                  "register it again with `brainomaly register`")
    found = bundle_digests(bundle)
    changed = [key.removesuffix("_sha256") for key in DIGEST_TAGS if found[key] != recorded[key]]
    if changed:
        raise ModelIntegrityError(f"{label}: the {' and '.join(changed)} downloaded differ from the SHA-256 recorded "
                                  "at registration; refusing to load it")


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
        try:
            client.get_model_version(match["name"], match["version"])
        except MlflowException as err:
            raise ModelNotFoundError(f"{match['name']!r} has no version {match['version']}: run `brainomaly register` "
                                     "or pin a version that exists") from err
        return match["name"], match["version"]
    raise ModelNotFoundError(f"model URI {model_uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
