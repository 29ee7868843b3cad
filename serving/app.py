"""The HTTP API: a Ray Serve application of three deployments.

    ingress (FastAPI)  parses and checks uploads, the API key, answers probes and /metrics
    DetectorModel      replicas holding the registry's detector (serving/detector.py)
    Monitor            one registry of metrics and the drift window (serving/monitor.py)

    POST /v1/predict   a NIfTI volume (.nii or .nii.gz; raw body or multipart), or a DICOM MR
                       series (a zip of its files, or its files as multipart parts) -> JSON scores;
                       ?map=nifti -> the anomaly map as NIfTI on the input's grid
                       ?map=png   -> a quick-look overlay of the most anomalous slices
                       ?map=dicom-seg, ?map=dicom-pmap -> for a DICOM series, a DICOM
                                     Segmentation / Parametric Map over it, carrying the verdict
                       ?site=NAME -> verdicts at that site's calibration (`brainomaly calibrate
                                     --site`; unknown: 400 listing the known; a calibration that
                                     failed to load: 503 for that site alone), drift per site
    GET  /v1/model     the model served, its thresholds and where it came from
    GET  /v1/sites     the sites the served version is calibrated for: scans, guaranteed rates, when
    GET  /healthz      liveness
    GET  /readyz       200 once a model is loaded, 503 before
    GET  /metrics      Prometheus exposition: the monitor's, for the whole deployment, and the
                       ingress's predictions in progress against its capacity
    GET  /docs, /openapi.json

Bad input gets a 4xx with a message that says what is wrong; the replica keeps serving. Over
capacity (``max_ongoing_requests`` per model replica plus ``max_queued_requests`` waiting) a
prediction gets 503 at once, while probes and /metrics, answered by the light ingress, stay up.
Uploads live in memory only: nothing a client sends is written to disk or logged.
"""

# No `from __future__ import annotations`: FastAPI must see the route signatures' real types
# (Request, Query) through Ray Serve's class-based views.
import asyncio
import contextvars
import hmac
import logging
import time
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.formparsers import MultiPartParser

from components.data.dicom_io import ZIP_MAGIC, DicomSource, files_from_zip, is_dicom, read_series
from components.data.nifti_io import volume_from_bytes
from components.errors import InvalidVolumeError
from pipelines.site_store import SITE_NAME
from serving.detector import DetectorModel
from serving.monitor import Monitor, tell
from serving.settings import EndpointSettings

log = logging.getLogger("brainomaly.serving")
logging.getLogger("nibabel").setLevel(logging.ERROR)  # its header fix-up notes, one per odd upload
api = FastAPI(title="Brainomaly", description="Unsupervised brain-MRI anomaly detection", version="1")
ROUTES = {"/v1/predict", "/v1/model", "/v1/sites", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
OPEN_ROUTES = {"/healthz", "/readyz"}  # the orchestrator's probes; /metrics too unless serve.metrics_require_key
API_KEY_HEADER = "X-API-Key"
PROBE_HEADROOM = 8  # requests the ingress admits beyond the model's capacity: probes, /metrics
MAP_FORMATS = {"nifti": ("application/gzip", "anomaly_map.nii.gz"), "png": ("image/png", "anomaly_overlay.png"),
               "dicom-seg": ("application/dicom", "anomaly_seg.dcm"), "dicom-pmap": ("application/dicom", "anomaly_map.dcm")}


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@api.exception_handler(RequestError)
async def request_error(_: Request, err: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 503 else None  # busy or loading: worth a retry soon
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


@api.middleware("http")
async def guard_and_observe(request: Request, call_next):
    """The API key on every route but the open ones (denied by default, whatever the prefix the
    endpoint is served under), one answer for any failure, and every request counted."""
    start = time.perf_counter()
    path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/")) or "/"
    route = path if path in ROUTES else "other"  # bounded label values
    endpoint: Ingress = request.app.state.endpoint
    if not endpoint.open(path) and not endpoint.authorised(request.headers.get(API_KEY_HEADER)):
        response = JSONResponse({"error": f"missing or wrong {API_KEY_HEADER} header"}, status_code=401)
    else:
        try:
            response = await call_next(request)
        except Exception:  # never let one bad request take the replica's answer away
            log.exception("unhandled error on %s", route)
            response = JSONResponse({"error": "internal error while processing the request"}, status_code=500)
    if route != "/metrics":
        await tell(endpoint.monitor.record_request, route, response.status_code, time.perf_counter() - start)
    return response


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {int(declared)} bytes exceeds the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_payload(request: Request, limit: int, max_files: int) -> list[bytes]:
    """The files of a raw-body or multipart/form-data upload, in memory only: one NIfTI or zip, or
    a DICOM series' files, one a part."""
    body = await read_limited(request, limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=max_files, max_part_size=limit)
        except Exception as err:  # malformed multipart: the parser's own message says where
            raise RequestError(400, f"malformed multipart upload: {err}") from None
        parts = [value for _, value in form.multi_items() if hasattr(value, "read")]
        if not parts:
            raise RequestError(400, "multipart upload holds no file part: send the scan as a file field")
        files = [await part.read() for part in parts]
        if any(files):
            return files
        body = b""
    if not body:
        raise RequestError(400, "empty body: POST a .nii or .nii.gz volume, or a DICOM series as a zip of its files")
    return [body]


def parse_scan(files: list[bytes], settings: EndpointSettings) -> tuple[np.ndarray, np.ndarray, DicomSource | None]:
    """(data, affine, its DICOM source or None) of one uploaded scan: a NIfTI file, a zip of a
    DICOM series' files, or the files themselves."""
    inflated = 4 * settings.max_upload_bytes
    if len(files) == 1 and not is_dicom(files[0]):
        return (*volume_from_bytes(files[0], limits=settings.limits, max_uncompressed_bytes=inflated), None)
    if len(files) == 1 and files[0][:4] == ZIP_MAGIC:
        named = files_from_zip(files[0], inflated, settings.limits.max_axis)
    else:
        named = [(f"part {number} of the upload", data) for number, data in enumerate(files, 1)]
    return read_series(named, settings.limits)


class Stopwatch:
    """Where a prediction's time goes, by stage: the ingress's own laps, and the model replica's
    stages, with the hops to and from it (queueing included) as ``transfer``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now

    def at_model(self, stages: dict[str, float]) -> None:
        """The model replica's stages; the rest of the round trip since the last lap is transfer."""
        now = time.perf_counter()
        self.seconds["transfer"] = max(0.0, now - self.last - sum(stages.values()))
        for stage, seconds in stages.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.last = now

    def server_timing(self) -> str:
        """The stages as an HTTP Server-Timing header (milliseconds), which browsers' tools show."""
        return ", ".join(f"{stage};dur={1000 * seconds:.1f}" for stage, seconds in self.seconds.items())


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: EndpointSettings, model: DeploymentHandle, monitor: DeploymentHandle,
                 capacity: int) -> None:
        self.settings, self.model, self.monitor = settings, model, monitor
        self.capacity, self.in_flight = capacity, 0  # predictions the model replicas can hold, and held now
        self.draining = False  # set on SIGTERM/SIGINT (serving/run.py): no new predictions
        self.at_model = 0  # of those, past their upload: at a model replica (queued or scored) or answered
        # the (single) ingress's own counts, read at each scrape rather than sent to the monitor late
        self.registry = CollectorRegistry()
        in_progress = Gauge("brainomaly_predictions_in_progress",
                            "Predictions holding a capacity slot until their work stops, by stage", ["stage"],
                            registry=self.registry)
        in_progress.labels("upload").set_function(lambda: self.in_flight - self.at_model)
        in_progress.labels("model").set_function(lambda: self.at_model)
        Gauge("brainomaly_prediction_capacity", "Predictions the model replicas can hold at once",
              registry=self.registry).set(capacity)
        # a multipart file part spools to a temporary file past 1 MB by default: uploads stay in memory
        MultiPartParser.spool_max_size = settings.max_upload_bytes
        api.state.endpoint = self

    def open(self, path: str) -> bool:
        return path in OPEN_ROUTES or (path == "/metrics" and not self.settings.metrics_require_key)

    def authorised(self, key: str | None) -> bool:
        expected = self.settings.api_key
        return not expected or (key is not None and hmac.compare_digest(key.encode(), expected.encode()))

    async def served_model(self) -> dict:
        return await self.monitor.served_model.remote()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def drain(self, timeout_s: float) -> int:
        """Stop taking predictions (503; /readyz 503 so a load balancer moves on) and wait up to
        ``timeout_s`` for those in flight to finish; how many had not."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        if self.draining:
            return JSONResponse({"status": "stopping"}, status_code=503)
        served = await self.served_model()
        if served["model"] is None:
            return JSONResponse({"status": "not ready", "error": served["last_load_error"] or "loading the model"}, status_code=503)
        return JSONResponse({"status": "ready", "model": served["model"]["name"], "version": served["model"]["version"]})

    @api.get("/v1/model")
    async def served(self) -> dict:
        served = await self.served_model()
        if served["model"] is None:
            raise RequestError(503, f"no model loaded yet ({served['last_load_error'] or 'loading'}); see /readyz")
        return {**served["model"], "model_uri": self.settings.model_uri, "last_load_error": served["last_load_error"]}

    @api.get("/v1/sites")
    async def sites(self) -> dict:
        """Every site the served version knows, each with its scan count, guaranteed false-alarm
        rates and when it was calibrated; a site whose calibration failed to load, with why."""
        model = await self.served()
        listed = [{"site": site, "status": "calibrated", **found} for site, found in model["sites"].items()]
        listed += [{"site": site, "status": "unavailable", **found} for site, found in model.get("broken_sites", {}).items()]
        return {"model": model["name"], "version": model["version"], "sites": sorted(listed, key=lambda s: s["site"])}

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        exposition = await self.monitor.exposition.remote() + generate_latest(self.registry)
        return Response(exposition, media_type="text/plain; version=0.0.4")

    @api.post("/v1/predict")
    async def predict(
        self, request: Request,
        map_format: Literal["nifti", "png", "dicom-seg", "dicom-pmap"] | None = Query(
            None, alias="map", description="nifti: the anomaly map on the input's grid; png: a quick look; for a "
                                           "DICOM series, dicom-seg: a DICOM Segmentation over it, dicom-pmap: "
                                           "the map as a DICOM Parametric Map"),
        site: str | None = Query(
            None, description="a site calibrated with `brainomaly calibrate --site`; none: the training calibration"),
    ) -> Response:
        if site is not None and not SITE_NAME.match(site):
            raise RequestError(400, f"site {site[:64]!r} is not a site name (lower-case letters, digits, '_', '-')")
        if self.draining:
            raise RequestError(503, "the endpoint is shutting down; retry on another replica or shortly")
        if self.in_flight >= self.capacity:  # answer before reading the upload: that is what keeps 503s fast
            raise RequestError(503, f"over capacity: {self.in_flight} predictions in progress; retry shortly")
        self.in_flight += 1
        # The slot is freed when the work stops, not when the client does, so drop-and-retry
        # cannot stack work. A client that hangs up cancels this await, not the work: shielded,
        # and in a context of its own, since Ray cancels every call made in a cancelled request's
        # context, and the model replica's thread would go on scoring outside any slot.
        work = asyncio.get_running_loop().create_task(self.answer(request, map_format, site), context=contextvars.Context())
        work.add_done_callback(self.release)
        return await asyncio.shield(work)

    def release(self, work: asyncio.Future) -> None:
        self.in_flight -= 1
        if not work.cancelled():
            work.exception()  # retrieved: a client that left is not an error to log

    async def answer(self, request: Request, map_format: str | None, site: str | None) -> Response:
        clock = Stopwatch()
        try:  # a deadline for the whole body: a client trickling bytes cannot hold its slot for long
            payload = await asyncio.wait_for(
                upload_payload(request, self.settings.max_upload_bytes, self.settings.limits.max_axis),
                self.settings.upload_timeout_s)
        except TimeoutError:
            raise RequestError(408, f"the upload took longer than {self.settings.upload_timeout_s:g} s; "
                                    "send it again on a faster connection") from None
        clock.lap("upload")
        try:
            # in a thread: gunzipping a 240x240x155 scan takes a while, probes must not wait on it
            data, affine, source = await asyncio.to_thread(parse_scan, payload, self.settings)
        except InvalidVolumeError as err:
            raise RequestError(400, str(err)) from None
        del payload
        clock.lap("parse")
        self.at_model += 1
        try:
            return await self.scored(data, affine, map_format, site, source, clock)
        finally:
            self.at_model -= 1

    async def scored(self, data: np.ndarray, affine: np.ndarray, map_format: str | None, site: str | None,
                     source: DicomSource | None, clock: Stopwatch) -> Response:
        """The parsed scan scored at a model replica, its scores told to the monitor, answered."""
        try:
            result = await self.model.predict.remote(data, affine, map_format, site, self.settings.predict_timeout_s,
                                                     source)
        except BackPressureError:
            raise RequestError(503, "over capacity: every model replica is busy and the queue is full; retry shortly") from None
        if "error" in result:
            raise RequestError(400, result["error"])
        if "unavailable" in result:
            raise RequestError(503, result["unavailable"])
        if "timeout" in result:
            raise RequestError(504, result["timeout"])
        clock.at_model(result.pop("seconds"))
        version = result["model"]["version"]
        if map_format is None:
            response = JSONResponse(result)
        else:
            media_type, filename = MAP_FORMATS[map_format]
            response = Response(result["map"], media_type=media_type, headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Volume-Verdict": result["volume_verdict"], "X-Model-Version": version,
            })
        clock.lap("answer")
        response.headers["Server-Timing"] = clock.server_timing()
        await tell(self.monitor.record_scores, version, [s["score"] for s in result["slices"]], site, clock.seconds)
        return response


def build_app(settings: EndpointSettings, deployment_options: dict):
    """The application. ``deployment_options`` (replicas or autoscaling, max_ongoing_requests,
    max_queued_requests) shape the model deployment, where the work is. The ingress turns a
    prediction away with 503 before reading its upload once the model replicas hold all they
    can, so uploads never pile up in memory; it admits a few more requests for probes and
    /metrics. The monitor is always one replica."""
    per_replica = deployment_options["max_ongoing_requests"] + deployment_options["max_queued_requests"]
    autoscaling = deployment_options.get("autoscaling_config")
    replicas = autoscaling["max_replicas"] if autoscaling else deployment_options["num_replicas"]
    light = {"num_cpus": 0}  # parsing and bookkeeping: the model replicas hold the CPUs
    drain = {"graceful_shutdown_timeout_s": deployment_options["graceful_shutdown_timeout_s"]}
    monitor = Monitor.options(ray_actor_options=light, **drain).bind(settings.drift)
    model = DetectorModel.options(**deployment_options).bind(settings, monitor)
    capacity = per_replica * replicas
    ingress = Ingress.options(max_ongoing_requests=capacity + PROBE_HEADROOM, max_queued_requests=PROBE_HEADROOM,
                              ray_actor_options=light, **drain)
    return ingress.bind(settings, model, monitor, capacity)
