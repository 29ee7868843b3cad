"""The model deployment: replicas that hold the registry's detector and score volumes.

Each replica follows the registry: at start and then every ``registry_poll_s`` it asks which
version the model URI names; a new version is loaded beside the serving one and
swapped in (requests already running finish on the old one); a version that fails to load
leaves the old one serving and is reported to the monitor. A site calibrated (or recalibrated)
for the serving version since is picked up the same way.

With ``batch_volumes`` > 1 the uploads a replica holds are scored together, their slices in
shared batches (``@serve.batch``), so a GPU stays busy however small each upload; each upload
still gets the answer it would get alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import NamedTuple

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from components.data.dicom_io import DicomSource
from components.data.nifti_io import VolumeLimits
from pipelines.model_store import resolve_version
from serving.model_source import load_predictor, sites_changed, with_sites
from serving.monitor import tell
from components.scoring.predictor import SiteUnavailableError, Upload, VolumePredictor
from serving.settings import EndpointSettings

log = logging.getLogger("brainomaly.serving")


class Job(NamedTuple):
    predictor: VolumePredictor  # the version serving when the request arrived
    upload: Upload
    deadline: float | None  # time.monotonic() past which scoring stops


def score_jobs(jobs: list[Job], limits: VolumeLimits) -> list[dict]:
    """Each job's result: one pass of the network per model version among them (a swap may
    land mid-batch). A shared pass runs to the latest of its jobs' deadlines."""
    results: list[dict] = [{}] * len(jobs)
    by_version: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_version.setdefault(id(job.predictor), []).append(i)
    for indices in by_version.values():
        deadlines = [jobs[i].deadline for i in indices]
        try:
            answers = jobs[indices[0]].predictor.predict_together(
                [jobs[i].upload for i in indices], limits, None if None in deadlines else max(deadlines))
        except TimeoutError as err:
            answers = [err] * len(indices)
        for i, answer in zip(indices, answers):
            results[i] = as_result(answer)
    return results


def as_result(answer: dict | Exception) -> dict:
    if isinstance(answer, TimeoutError):
        return {"timeout": str(answer)}
    if isinstance(answer, SiteUnavailableError):  # the server's fault, and that site's alone
        return {"unavailable": str(answer)}
    if isinstance(answer, Exception):  # the upload's own error: a scan or a site it cannot use
        return {"error": str(answer)}
    return answer


@serve.deployment
class DetectorModel:
    def __init__(self, settings: EndpointSettings, monitor: DeploymentHandle) -> None:
        self.settings, self.monitor = settings, monitor
        self.predictor: VolumePredictor | None = None
        self.score_together.set_max_batch_size(settings.batch_volumes)
        self.score_together.set_batch_wait_timeout_s(settings.batch_wait_s)
        self.follower = asyncio.get_running_loop().create_task(self.follow_registry())

    async def predict(self, data: np.ndarray, affine: np.ndarray, with_map: str | None, site: str | None = None,
                      timeout_s: float | None = None, source: DicomSource | None = None) -> dict:
        """The predictor's result, or {"error": ...} for a volume it cannot use or a site it does
        not know, {"unavailable": ...} before any version has loaded or for a site whose
        calibration failed to load, or {"timeout": ...} when
        scoring ran past ``timeout_s`` (it stops there: a thread cannot be cancelled, so the
        predictor checks the deadline between batches)."""
        predictor = self.predictor  # this request keeps this version even if a swap happens now
        if predictor is None:
            return {"unavailable": "no model loaded yet; see /readyz"}
        job = Job(predictor, Upload(data, affine, with_map, site, source),
                  time.monotonic() + timeout_s if timeout_s else None)
        if self.settings.batch_volumes > 1:
            return await self.score_together(job)
        # alone: each in its own thread, so a CPU replica still works on max_ongoing_requests at once
        # (a @serve.batch method runs one batch at a time)
        (result,) = await asyncio.to_thread(score_jobs, [job], self.settings.limits)
        await tell(self.monitor.record_pass, 1)
        return result

    @serve.batch(max_batch_size=1)  # sized from the settings at start
    async def score_together(self, jobs: list[Job]) -> list[dict]:
        results = await asyncio.to_thread(score_jobs, jobs, self.settings.limits)
        await tell(self.monitor.record_pass, len(jobs))
        return results

    async def follow_registry(self) -> None:
        while True:  # a fixed version too: sites may be calibrated for it while it serves
            await self.refresh()
            await asyncio.sleep(self.settings.registry_poll_s)

    async def refresh(self) -> None:
        try:
            name, version = await asyncio.to_thread(resolve_version, self.settings.model_uri, self.settings.tracking_uri)
        except Exception as err:  # the registry unreachable for a moment: keep serving what we have
            log.warning("cannot reach the model registry: %s", err)
            return
        current = self.predictor
        try:
            if current is not None and current.model_version == version:
                if not await asyncio.to_thread(sites_changed, current, self.settings.tracking_uri):
                    return
                predictor = await asyncio.to_thread(with_sites, current, self.settings.tracking_uri)  # a site (re)calibrated
            else:
                predictor = replace(await asyncio.to_thread(load_predictor, name, version, self.settings.tracking_uri),
                                    min_component_voxels=self.settings.min_component_voxels,
                                    thin_slices=self.settings.thin_slices)
        except Exception as err:  # a broken version must never take the serving one down
            serving = self.predictor.model_version if self.predictor else "nothing"
            log.error("version %s of %s failed to load; still serving %s: %s", version, name, serving, err)
            # the reason stays in the log: its text may hold the registry's URI and credentials
            await tell(self.monitor.model_load_failed, version,
                       f"version {version} failed to load ({type(err).__name__}); the server log says why")
            return
        self.predictor = predictor
        references = {site: c.reference_scores for site, c in predictor.sites.items()}
        await tell(self.monitor.model_loaded, predictor.description(), predictor.bundle.calibration.reference_scores,
                   references)
        log.info("serving %s version %s", name, version)
