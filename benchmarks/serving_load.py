"""Latency, throughput and overload of the HTTP endpoint on a 240x240x155 volume (.nii.gz).

    python benchmarks/serving_load.py [--requests 30] [--seconds 30] [--volume SCAN.nii.gz]
                                      [--model-uri models:/brainomaly-detector/<version>]
                                      [--output benchmarks/results/serving_cpu.json]

Runs after `make run`: serves this repo's registered champion (or ``--model-uri``) with
`brainomaly serve` on a free port of 127.0.0.1 (the params' serve section as it is), and drives
it from this process:

1. latency: one client, ``--requests`` sequential predictions -> p50, p90, p99, and the median
   of each stage the endpoint reports in its Server-Timing header (where the time goes); then
   the same volume as a 155-image DICOM series (a zip) answered with its DICOM SEG;
2. throughput: 1, 2 and 4 concurrent clients for ``--seconds`` each -> volumes/s and latency;
3. overload: twice the capacity ((max_ongoing + max_queued) x replicas x 2 clients) for
   ``--seconds``: every answer must be 200 or 503, 503s must come fast, and the server must
   still be ready afterwards. Clients wait the 1 s the endpoint's Retry-After asks after a 503.

The volume is a BraTS-layout phantom resampled to BraTS's 240x240x155 grid at 1 mm, or the
``--volume`` given (a real scan: posted as its own file, and as a DICOM series of its voxels).
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from components.data.dicom_io import series_zip, volume_to_series
from components.data.layouts import read_brats
from components.data.nifti_io import load_volume
from pipelines.params import load_params
from serving.local_server import running_server
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]
BRATS_SHAPE = (240, 240, 155)
RETRY_AFTER_503_S = 1.0  # what the endpoint's Retry-After asks for


def brats_sized_volume(params) -> tuple[np.ndarray, np.ndarray]:
    case = read_brats(params.path(params.phantoms.brats_root), params.data.modality)[0]
    data, affine = load_volume(case.image)
    zoom = [n / m for n, m in zip(BRATS_SHAPE, data.shape)]
    resized = ndimage.zoom(data, zoom, order=1)
    return resized.astype(np.float32), affine @ np.diag([1 / z for z in zoom] + [1.0])


def brats_sized_upload(params) -> bytes:
    return gzip.compress(nib.Nifti1Image(*brats_sized_volume(params)).to_bytes(), compresslevel=6)


def dicom_seg_latency(url: str, series: bytes, n: int) -> dict:
    """``n`` sequential uploads of a DICOM series (a zip), each answered with its DICOM SEG."""
    def post() -> float:
        start = time.perf_counter()
        response = requests.post(f"{url}/v1/predict?map=dicom-seg", data=series, timeout=300)
        assert response.status_code == 200 and response.headers["content-type"] == "application/dicom", response.text
        return time.perf_counter() - start

    post()  # warm-up
    return {"requests": n, "upload_bytes": len(series), **percentiles([post() for _ in range(n)])}


def timed_post(url: str, payload: bytes, stages: list | None = None) -> tuple[int, float]:
    """(status, seconds) of one prediction; its Server-Timing stages (seconds) appended to ``stages``."""
    start = time.perf_counter()
    try:
        response = requests.post(f"{url}/v1/predict", data=payload, timeout=300)
        status = response.status_code
    except requests.RequestException:
        return 0, time.perf_counter() - start  # no answer at all: counted, and never expected
    if stages is not None and "Server-Timing" in response.headers:
        stages.append({name: float(ms) / 1000 for name, ms in
                       (entry.split(";dur=") for entry in response.headers["Server-Timing"].split(", "))})
    return status, time.perf_counter() - start


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    p = np.percentile(seconds, [50, 90, 99])
    return {"p50_s": round(float(p[0]), 3), "p90_s": round(float(p[1]), 3), "p99_s": round(float(p[2]), 3)}


def latency(url: str, payload: bytes, n: int) -> dict:
    """``n`` sequential predictions: percentiles, and the median of each stage (where the time goes)."""
    timed_post(url, payload)  # warm-up: first-call allocations
    stages: list[dict] = []
    answers = [timed_post(url, payload, stages) for _ in range(n)]
    assert all(status == 200 for status, _ in answers), answers
    medians = {stage: round(float(np.median([s[stage] for s in stages])), 4) for stage in (stages[0] if stages else {})}
    client = float(np.median([s for _, s in answers]))
    return {"requests": n, **percentiles([s for _, s in answers]), "stage_median_s": medians,
            "outside_stages_median_s": round(client - sum(medians.values()), 4)}


def for_a_while(url: str, payload: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads posting back to back for ``seconds``; every answer recorded."""
    stop = time.monotonic() + seconds
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client(_):
        while time.monotonic() < stop:
            answer = timed_post(url, payload)
            with lock:
                answers.append(answer)
            if answer[0] == 503:
                time.sleep(RETRY_AFTER_503_S)  # a polite client backs off instead of hammering

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    statuses = {str(code): sum(1 for s, _ in answers if s == code) for code in sorted({s for s, _ in answers})}
    by_status = {code: percentiles([t for s, t in answers if str(s) == code]) for code in statuses}
    return {"clients": clients, "seconds": round(wall, 1), "statuses": statuses,
            "volumes_per_s": round(statuses.get("200", 0) / wall, 3), "latency_by_status": by_status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--volume", type=Path, help="a .nii(.gz) scan to post instead of the BraTS-sized phantom")
    parser.add_argument("--model-uri", help="a registered version to serve instead of the champion")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "serving_cpu.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    if args.volume:
        payload, (data, affine) = args.volume.read_bytes(), load_volume(args.volume)
    else:
        (data, affine), payload = brats_sized_volume(params), brats_sized_upload(params)
    serve = params.serve
    replicas = serve.autoscaling.max_replicas if serve.autoscaling else serve.num_replicas
    capacity = (serve.max_ongoing_requests + serve.max_queued_requests) * replicas
    with running_server(REPO, model_uri=args.model_uri) as url:
        served = requests.get(f"{url}/v1/model", timeout=30).json()
        result = {
            "machine": machine(),
            "model_uri": args.model_uri or f"models:/{params.registry.model_name}@{params.registry.alias}",
            "model": {"version": served.get("version"), "precision": served.get("precision")},
            "volume": {"file": args.volume.name if args.volume else "BraTS-sized phantom", "shape": list(data.shape),
                       "upload_bytes": len(payload), "format": ".nii.gz" if payload[:2] == b"\x1f\x8b" else ".nii"},
            "serve": {"replicas": replicas, "max_ongoing_requests": serve.max_ongoing_requests,
                      "max_queued_requests": serve.max_queued_requests},
            "latency_1_client": latency(url, payload, args.requests),
            "dicom_seg_1_client": dicom_seg_latency(url, series_zip(volume_to_series(data, affine)),
                                                    max(5, args.requests // 3)),
            "throughput": [for_a_while(url, payload, clients, args.seconds) for clients in (1, 2, 4)],
            "overload": for_a_while(url, payload, 2 * capacity, args.seconds),
        }
        result["overload"]["ready_after"] = requests.get(f"{url}/readyz", timeout=30).status_code == 200
    overload = result["overload"]
    overload["only_200_and_503"] = set(overload["statuses"]) <= {"200", "503"}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    show(result)


def show(result: dict) -> None:
    volume = result["volume"]
    table = Table("run", "clients", "volumes/s", "statuses", "p50 s", "p99 s",
                  title=f"Endpoint on {volume.get('file', 'a')} {'x'.join(map(str, volume['shape']))} {volume['format']}")
    one = result["latency_1_client"]
    table.add_row("latency", "1", "", f"200 x {one['requests']}", str(one["p50_s"]), str(one["p99_s"]))
    seg = result["dicom_seg_1_client"]
    table.add_row("DICOM series in, SEG out", "1", "", f"200 x {seg['requests']}", str(seg["p50_s"]), str(seg["p99_s"]))
    for run in [*result["throughput"], result["overload"]]:
        name = "overload" if run is result["overload"] else "throughput"
        for code, stats in run["latency_by_status"].items():
            table.add_row(name, str(run["clients"]), str(run["volumes_per_s"]), f"{code} x {run['statuses'][code]}",
                          str(stats["p50_s"]), str(stats["p99_s"]))
    Console().print(table)
    stages = Table("stage", "median s", title="Where one prediction's time goes (Server-Timing, 1 client)")
    for stage, seconds in [*one.get("stage_median_s", {}).items(), ("client and network", one.get("outside_stages_median_s"))]:
        stages.add_row(stage, str(seconds))
    Console().print(stages)
    print(f"overload: only 200/503: {result['overload']['only_200_and_503']}, ready after: {result['overload']['ready_after']}")


if __name__ == "__main__":
    main()
