"""`brainomaly calibrate --site NAME --healthy DIR`: thresholds for a new site from its own
unlabelled healthy scans, stored with the served model in the registry.

DIR holds the site's healthy scans in any supported layout, or is a plain folder of .nii /
.nii.gz files. The model is the version ``register.alias`` names: what the endpoint serves.
Every scan goes through that model's recipe and detector; the slice and volume thresholds are
set so that ``calibrate.target_false_alarm_rate`` of the scans' slices and volumes lie above
them, the pixel threshold at ``evaluate.pixel_threshold_percentile`` of their brain pixels, and
their slice scores become the site's drift reference. The
calibration is stored with the version (pipelines/site_store.py): replicas pick it up at their
next registry poll, and ``POST /v1/predict?site=NAME`` applies it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.data.layouts import read_dataset
from components.models.bundle import DetectorBundle
from pipelines import tracking
from pipelines.evaluate import calibrate
from pipelines.model_store import fetch_bundle
from pipelines.params import Params
from pipelines.register import champion
from pipelines.site_store import check_site_name, store_site_calibration
from pipelines.sites import score_subjects


def run(params: Params, site: str, healthy: Path) -> dict:
    check_site_name(site)
    client = tracking.client(params)
    name, alias = params.registry.model_name, params.registry.alias
    version = champion(client, name, alias)
    if version is None:
        raise ValueError(f"no model has alias {alias!r} under {name!r}: run `make run` (or `brainomaly register`) first")
    subjects = read_dataset(healthy, "auto", params.data.modality, "healthy")
    with tempfile.TemporaryDirectory() as tmp:
        folder, _, _ = fetch_bundle(f"models:/{name}/{version.version}", client.tracking_uri, Path(tmp))
        bundle, detector = DetectorBundle.load(folder, params.evaluate.device)
    rule, precision = bundle.calibration.score_reference, bundle.calibration.precision  # the model's units
    reference, skipped = score_subjects(detector, subjects, bundle.preprocess, params.preprocess.workers, rule, precision,
                                        f"calibrate: {site}")
    if not reference:
        raise ValueError(f"none of the {len(subjects)} scans in {healthy} could be used: {skipped[0]['error']}")
    target = params.calibrate.target_false_alarm_rate
    calibration = calibrate(reference, 100.0 * (1.0 - target), params.evaluate.pixel_threshold_percentile, rule, precision)
    details = {"model": f"models:/{name}/{version.version}", "healthy": str(healthy), "scans": len(subjects) - len(skipped),
               "slices": len(reference["scores"]), "target_false_alarm_rate": target}
    run_id = store_site_calibration(client, tracking.experiment_id(params), name, str(version.version), site,
                                    calibration, details)
    training = bundle.calibration
    return {
        "site": site, "model": f"models:/{name}/{version.version}", "alias": alias, "mlflow_run_id": run_id,
        "target_false_alarm_rate": target,
        "scans": len(subjects) - len(skipped), "slices": len(reference["scores"]), "skipped": skipped,
        "thresholds": {k: {"site": getattr(calibration, k), "training": getattr(training, k)}
                       for k in ("slice_threshold", "volume_threshold", "pixel_threshold")},
    }
