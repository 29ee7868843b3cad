"""`brainomaly score`: every scan of an archive scored by a registered model, on Ray Data.

Reading and preprocessing run as Ray tasks, scoring in model actors (each with a GPU where the
cluster has them and ``score.gpus_per_actor`` asks for one), streamed: a few scans are in memory
at a time whatever the archive's size. Results go to the output folder as parquet
(components/scoring/archive.py), flushed every ``score.flush_every`` scans; a rerun scores only
the scans not done. The same code runs on a laptop and, with RAY_ADDRESS, on a cluster (whose
workers must see the archive and the output folder at the same paths).
"""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from components.data.nifti_io import VolumeLimits
from components.models.bundle import DESCRIPTION
from components.models.calibration import Calibration
from components.scoring.archive import ArchiveScan, ResultStore, find_scans, read_scan
from components.scoring.predictor import Upload, VolumePredictor, prepare_volume
from components.preprocess.spec import PreprocessSpec
from pipelines.errors import StageError
from pipelines.model_store import fetch_bundle, registry_client
from pipelines.params import Params, ScoreParams
from pipelines.ray_cluster import ray_session
from pipelines.site_store import load_site_calibrations, site_records
from pipelines.tracking import tracking_uri

log = logging.getLogger(__name__)
# What one prepare task holds: a BraTS-sized scan read and through the recipe takes ~190 MB
PREPARE_MEMORY = 512 * 2**20


def prepare(row: dict, spec: PreprocessSpec, limits: VolumeLimits) -> dict:
    """A Ray task: one scan read and preprocessed, or the reason it cannot be."""
    scan = ArchiveScan(row["case"], row["kind"], tuple(row["paths"]), row["brain_mask"])
    try:
        data, affine = read_scan(scan, limits)
        prepared = pickle.dumps((affine, prepare_volume(data, affine, spec, limits, scan.case)))
        return {"case": scan.case, "path": scan.paths[0], "prepared": prepared, "error": ""}
    except (ValueError, OSError) as err:  # InvalidVolumeError, InvalidSeriesError, LayoutError, unreadable files
        return {"case": scan.case, "path": scan.paths[0], "prepared": b"", "error": str(err)}


class Scorer:
    """A model actor: the bundle loaded once, then batches of prepared scans scored together."""

    def __init__(self, bundle_files: dict[str, bytes], name: str, version: str, site: str | None,
                 site_calibration: Calibration | None, maps: str | None, thin_slices: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="brainomaly-bundle-"))
        for relative, content in bundle_files.items():
            (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / relative).write_bytes(content)
        self.predictor = replace(VolumePredictor.from_folder(self.folder, name, version, device="auto"),
                                 thin_slices=thin_slices)
        if site is not None:
            self.predictor.sites[site] = site_calibration
        self.site, self.maps = site, Path(maps) if maps else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        ready = [i for i, error in enumerate(batch["error"]) if not error]
        prepared = [pickle.loads(batch["prepared"][i]) for i in ready]
        uploads = [(Upload(None, affine, "nifti" if self.maps else None, self.site), slices) for affine, slices in prepared]
        answers = dict(zip(ready, self.predictor.score_prepared(uploads)))
        results, errors = [], []
        for i, case in enumerate(batch["case"]):
            answer = answers.get(i, batch["error"][i])
            if isinstance(answer, dict) and self.maps:
                self.write_map(case, answer.pop("map"))
            results.append(pickle.dumps(answer) if isinstance(answer, dict) else b"")
            errors.append(str(answer) if not isinstance(answer, dict) else "")
        return {"case": list(batch["case"]), "path": list(batch["path"]), "result": results, "error": errors}

    def write_map(self, case: str, gzipped: bytes) -> None:
        path = self.maps / f"{case}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        part.write_bytes(gzipped)
        part.replace(path)


def check_room(settings: ScoreParams) -> None:
    """Refuse, before any scan is read, model actors that leave the cluster no CPU for a prepare
    task (or ask for GPUs it lacks): Ray Data would wait for them for ever."""
    have = ray.cluster_resources()
    cpus, gpus = settings.actors * settings.cpus_per_actor, settings.actors * settings.gpus_per_actor
    if cpus + 1 > have.get("CPU", 0) or gpus > have.get("GPU", 0):
        raise ValueError(f"score.actors x score.cpus_per_actor / gpus_per_actor ({settings.actors} x "
                         f"{settings.cpus_per_actor:g} / {settings.gpus_per_actor:g}) and one CPU to prepare scans need "
                         f"{cpus + 1:g} CPUs and {gpus:g} GPUs; the Ray cluster has {have.get('CPU', 0):g} and "
                         f"{have.get('GPU', 0):g}: lower score.actors or its share")


def run(params: Params, input: Path, output: Path, layout: str = "auto", modality: str | None = None,
        model_uri: str | None = None, site: str | None = None, maps: bool = False) -> dict:
    settings = params.score
    scans = find_scans(input, layout, modality or params.data.modality)
    store = ResultStore(output)
    done = store.done()
    todo = [scan for scan in scans if scan.case not in done]
    summary = {"scans": len(scans), "done_before": len(scans) - len(todo), "scored": 0, "failed": 0}
    if not todo:
        return summary | {"output": str(output)}
    uri = model_uri or f"models:/{params.registry.model_name}@{params.registry.alias}"
    with tempfile.TemporaryDirectory() as tmp:  # the actors get the files themselves: a cluster's workers too
        folder, name, version = fetch_bundle(uri, tracking_uri(params), Path(tmp))
        bundle_files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    spec = PreprocessSpec.from_dict(json.loads(bundle_files[DESCRIPTION])["preprocess"])
    calibration = site_calibration(params, name, version, site) if site else None
    limits = VolumeLimits(params.serve.max_voxels, params.serve.max_axis)
    start = time.perf_counter()
    with ray_session():
        check_room(settings)
        dataset = ray.data.from_items([asdict(scan) for scan in todo], override_num_blocks=len(todo))
        # Its own memory request keeps preparing a separate operator: Ray Data would otherwise fuse it
        # into the model actor, where every scan's reading waits on the one CPU that scores.
        dataset = dataset.map(prepare, fn_kwargs={"spec": spec, "limits": limits}, memory=PREPARE_MEMORY)
        dataset = dataset.map_batches(
            Scorer, fn_constructor_kwargs={"bundle_files": bundle_files, "name": name, "version": version, "site": site,
                                           "site_calibration": calibration, "thin_slices": params.serve.thin_slices,
                                           "maps": str(Path(output) / "maps") if maps else None},
            batch_size=settings.volumes_per_batch, concurrency=settings.actors, num_gpus=settings.gpus_per_actor,
            num_cpus=settings.cpus_per_actor)
        try:
            with tqdm(total=len(todo), unit="scan", desc="score") as bar:
                for row in dataset.iter_rows():
                    result = pickle.loads(row["result"]) if row["result"] else None
                    store.add(row["case"], row["path"], result, row["error"] or None)
                    summary["scored" if result else "failed"] += 1
                    bar.update()
                    if store.pending() >= settings.flush_every:
                        store.flush()
        except KeyboardInterrupt:
            store.flush()
            log.warning("stopped after %d of %d scans: those are saved, and the same command goes on from there",
                        summary["scored"] + summary["failed"], len(todo))
            raise
        store.flush()
    seconds = time.perf_counter() - start
    return summary | {"output": str(output), "model": f"{name} v{version}", "seconds": round(seconds, 1),
                      "scans_per_minute": round(60 * (summary["scored"] + summary["failed"]) / seconds, 1)}


def site_calibration(params: Params, name: str, version: str, site: str) -> Calibration:
    client = registry_client(tracking_uri(params))
    sites, broken = load_site_calibrations(client, name, version, site_records(client, name, version))
    if site in broken:
        raise StageError(f"site {site!r} is calibrated for {name} v{version}, but {broken[site]}")
    if site not in sites:
        raise StageError(f"unknown site {site!r}; sites calibrated for {name} v{version}: {', '.join(sorted(sites)) or 'none'}")
    return sites[site]
