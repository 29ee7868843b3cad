"""The HTTP API, as a Ray Serve deployment with a FastAPI ingress.

    POST /v1/predict   a NIfTI volume (.nii or .nii.gz; raw body or multipart) -> JSON scores
    GET  /healthz      liveness and the model served
    GET  /metrics      Prometheus exposition
    GET  /docs         OpenAPI documentation

Bad input gets a 4xx with a message that says what is wrong; the replica keeps serving.
"""

import asyncio
import logging
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from components.data.nifti_io import InvalidVolumeError, volume_from_bytes
from serving import metrics
from serving.model_source import fetch_bundle
from serving.predictor import VolumePredictor

log = logging.getLogger("brainomaly.serving")
api = FastAPI(title="Brainomaly", description="Unsupervised brain-MRI anomaly detection", version="1")


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@api.middleware("http")
async def count_requests(request: Request, call_next):
    start = time.perf_counter()
    route = request.url.path
    try:
        response = await call_next(request)
    except Exception:  # never let one bad request take the replica's answer away
        log.exception("unhandled error on %s", route)
        response = JSONResponse({"error": "internal error while processing the request"}, status_code=500)
    if route != "/metrics":
        metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        metrics.LATENCY.labels(route).observe(time.perf_counter() - start)
    return response


@api.exception_handler(RequestError)
async def request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status)


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


async def upload_payload(request: Request, limit: int) -> bytes:
    """The NIfTI bytes of a raw-body or multipart/form-data upload."""
    body = await read_limited(request, limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1)
        files = [value for value in form.values() if hasattr(value, "read")]
        if not files:
            raise RequestError(400, "multipart upload holds no file part: send the NIfTI as a file field")
        body = await files[0].read()
    if not body:
        raise RequestError(400, "empty body: POST a .nii or .nii.gz volume")
    return body


@serve.deployment
@serve.ingress(api)
class DetectorEndpoint:
    """One replica: the champion detector loaded from the MLflow registry at start-up."""

    def __init__(self, model_uri: str, tracking_uri: str, max_upload_bytes: int) -> None:
        self.max_upload_bytes = max_upload_bytes
        with tempfile.TemporaryDirectory() as tmp:
            folder, name, version = fetch_bundle(model_uri, tracking_uri, Path(tmp))
            self.predictor = VolumePredictor.from_folder(folder, name, version)
        metrics.MODEL_INFO.labels(name, version).set(1)
        log.info("serving %s version %s", name, version)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.predictor.model_name, "version": self.predictor.model_version}

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> dict:
        payload = await upload_payload(request, self.max_upload_bytes)
        try:
            data, affine = volume_from_bytes(payload, max_uncompressed_bytes=4 * self.max_upload_bytes)
            result = await asyncio.to_thread(self.predictor.predict, data, affine)
        except InvalidVolumeError as err:
            raise RequestError(400, str(err)) from None
        for entry in result["slices"]:
            metrics.SLICE_SCORES.observe(entry["score"])
        return result


def build_app(model_uri: str, tracking_uri: str, max_upload_mb: float, num_replicas: int = 1):
    return DetectorEndpoint.options(num_replicas=num_replicas).bind(
        model_uri, tracking_uri, int(max_upload_mb * 2**20)
    )
