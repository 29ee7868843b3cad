"""`brainomaly calibrate --site NAME --healthy DIR`: thresholds for a new site from its own
unlabelled healthy scans, stored with the served model in the registry, and the site listed in
sites.yaml so that every model registered later is calibrated for it too (pipelines/site_store.py).

DIR holds the site's healthy scans in any supported layout, or is a plain folder of .nii /
.nii.gz files. The model is the version ``register.alias`` names: what the endpoint serves.
Every scan goes through that model's recipe and detector; the slice and volume thresholds are
split-conformal for ``calibrate.target_false_alarm_rate`` (components/metrics/conformal.py), the
pixel threshold for 1 - ``evaluate.pixel_threshold_percentile`` / 100 of their brain pixels, and
their slice scores become the site's drift reference. n scans can guarantee no less than 1/(n+1)
of healthy volumes flagged: below ``calibrate.min_scans`` the command says what its scans can
guarantee and how many the target needs, and stops unless ``--allow-few-scans``. Replicas pick
the calibration up at their next registry poll, and ``POST /v1/predict?site=NAME`` applies it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.data.layouts import read_dataset
from components.metrics.conformal import scans_needed
from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from pipelines import tracking
from pipelines.evaluate import calibrate
from pipelines.model_store import champion, fetch_bundle
from pipelines.params import Params
from pipelines.site_store import SITES_FILE, add_site, check_site_name, read_sites, scans_fingerprint, store_site_calibration
from pipelines.sites import score_subjects


class TooFewScansError(ValueError):
    """Fewer healthy scans than ``calibrate.min_scans``: the guarantee they allow is stated."""


def check_scan_count(scans: int, target: float, min_scans: int) -> None:
    if scans < min_scans:
        raise TooFewScansError(
            f"{scans} healthy scan{'s' if scans != 1 else ''} can guarantee at best {1 / (scans + 1):.1%} of healthy "
            f"volumes flagged (a threshold of n scans cannot promise less than 1/(n+1)); the target "
            f"{target:.0%} needs {scans_needed(target)} scans and calibrate.min_scans is {min_scans}. Add scans, or "
            f"pass --allow-few-scans to calibrate with these and that guarantee")


def site_scans(params: Params, site: str, healthy: Path) -> list:
    """The site's healthy scans, or a clear error when their folder is gone."""
    if not Path(healthy).is_dir():
        raise FileNotFoundError(f"site {site}: its healthy scans' folder {healthy} is missing")
    return read_dataset(Path(healthy), "auto", params.data.modality, "healthy")


def calibrate_site(params: Params, bundle: DetectorBundle, detector, site: str, healthy: Path,
                   allow_few_scans: bool = False) -> tuple[Calibration, dict]:
    """The site's calibration for one model, and what it came from (scans, slices, skipped ones);
    unless ``allow_few_scans``, fewer usable scans than ``calibrate.min_scans`` are refused."""
    target, least = params.calibrate.target_false_alarm_rate, params.calibrate.min_scans
    subjects = site_scans(params, site, healthy)
    scoring = bundle.calibration.scoring  # the model's units
    reference, skipped = score_subjects(detector, subjects, bundle.preprocess, params.preprocess.workers, scoring,
                                        f"calibrate: {site}")
    if not reference:
        raise ValueError(f"none of the {len(subjects)} scans in {healthy} could be used: {skipped[0]['error']}")
    if not allow_few_scans:
        check_scan_count(len(subjects) - len(skipped), target, least)
    calibration = calibrate(reference, 100.0 * (1.0 - target), params.evaluate.pixel_threshold_percentile, scoring)
    return calibration, {"healthy": str(healthy), "scans": calibration.scans, "slices": len(reference["scores"]),
                         "target_false_alarm_rate": target, "skipped": skipped}


def calibrate_known_sites(params: Params, client, name: str, version: str, bundle: DetectorBundle,
                          detector) -> dict[str, dict]:
    """Every site of sites.yaml calibrated for a newly registered version, before its alias can
    move: per site, what was stored, or why it could not be (its scans gone, say)."""
    report = {}
    for site, entry in read_sites(params.path(SITES_FILE)).items():
        healthy = params.path(entry["healthy"])  # a relative folder is the project's
        try:  # listed once, so accepted once: a site of few scans keeps its stated guarantee
            calibration, details = calibrate_site(params, bundle, detector, site, healthy, allow_few_scans=True)
        except (OSError, ValueError) as err:
            report[site] = {"calibrated": False, "error": str(err)}
            continue
        details.pop("skipped")
        run_id = store_site_calibration(client, tracking.experiment_id(params), name, version, site, calibration,
                                        {"model": f"models:/{name}/{version}", **details})
        report[site] = {"calibrated": True, "mlflow_run_id": run_id, "scans": calibration.scans,
                        "guaranteed_false_alarm_rates": calibration.guaranteed_rates,
                        "scans_changed_since_listed": scans_fingerprint(healthy) != entry.get("scans_sha256")}
    return report


def run(params: Params, site: str, healthy: Path, allow_few_scans: bool = False) -> dict:
    check_site_name(site)
    client = tracking.client(params)
    name, alias = params.registry.model_name, params.registry.alias
    version = champion(client, name, alias)
    if version is None:
        raise ValueError(f"no model has alias {alias!r} under {name!r}: run `make run` (or `brainomaly register`) first")
    if not allow_few_scans:  # said before the model is fetched; scans that then prove unusable are counted again
        check_scan_count(len(site_scans(params, site, healthy)), params.calibrate.target_false_alarm_rate,
                         params.calibrate.min_scans)
    with tempfile.TemporaryDirectory() as tmp:
        folder, _, _ = fetch_bundle(f"models:/{name}/{version.version}", client.tracking_uri, Path(tmp))
        bundle, detector = DetectorBundle.load(folder, params.evaluate.device)
    calibration, details = calibrate_site(params, bundle, detector, site, healthy, allow_few_scans)
    skipped = details.pop("skipped")
    run_id = store_site_calibration(client, tracking.experiment_id(params), name, str(version.version), site,
                                    calibration, {"model": f"models:/{name}/{version.version}", **details})
    listed = add_site(params.path(SITES_FILE), site, healthy)
    training = bundle.calibration
    return {
        "site": site, "model": f"models:/{name}/{version.version}", "alias": alias, "mlflow_run_id": run_id,
        "listed_in": str(SITES_FILE), "scans_sha256": listed["scans_sha256"], **details, "skipped": skipped,
        "guaranteed_false_alarm_rates": calibration.guaranteed_rates,
        "thresholds": {k: {"site": getattr(calibration, k), "training": getattr(training, k)}
                       for k in ("slice_threshold", "volume_threshold", "pixel_threshold")},
    }
