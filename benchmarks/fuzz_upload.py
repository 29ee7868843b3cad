"""Fuzzing of the upload path: malformed uploads must get a 4xx (or a 200 when still a usable
scan), never a 5xx, a dropped connection or a dead server.

    python benchmarks/fuzz_upload.py [--examples 10000] [--output benchmarks/results/fuzz_upload.json]

Runs after `make run`: serves this repo's champion on a free port of 127.0.0.1 and posts
hypothesis-generated uploads: random bytes; a small valid scan truncated, bit-flipped, or with
header fields set to hostile values (dimensions, data type, voxel offset, voxel sizes, scaling,
orientation matrices), raw or gzipped; gzip bombs; broken multipart bodies. The run is bounded
by its example count and stops by itself. It records each answer's time and the server's memory
(every process of it, Ray's included) after each answer, and fails when that memory grows past
``--rss-budget-mb`` over its warmed-up size; first, twelve header bombs at once (uploads of under 70 bytes
whose header claims a 4 GB volume) measure the refusal's time and the server's peak memory.
tests/serving/test_http_endpoint.py runs a few hundred of the same examples in the test suite.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import struct
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from components.machine import machine

REPO = Path(__file__).resolve().parents[1]

# NIfTI-1 header fields (byte offset, struct format) that a hostile file may set to anything
HEADER_FIELDS = {
    "dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "quatern": (256, "<6f"), "srow": (280, "<12f"),
}
HOSTILE_INTS = st.sampled_from([0, -1, 1, 2, 3, 7, 8, 16, 64, 255, 256, 1000, 2**15 - 1, -(2**15)])
HOSTILE_FLOATS = st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 352.0, 3.4e38])


def valid_scan() -> bytes:
    """A small skull-stripped-looking volume the endpoint scores (a bright ellipsoid)."""
    grid = np.mgrid[:32, :32, :24].astype(np.float32)
    inside = ((grid[0] - 16) / 12) ** 2 + ((grid[1] - 16) / 13) ** 2 + ((grid[2] - 12) / 10) ** 2 < 1
    data = np.where(inside, 100 + 20 * np.sin(grid[0] / 3) * np.cos(grid[1] / 4), 0).astype(np.float32)
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_bytes()


VALID = valid_scan()


@st.composite
def hostile_header(draw) -> bytes:
    body = bytearray(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(HEADER_FIELDS)), min_size=1, max_size=3, unique=True)):
        offset, fmt = HEADER_FIELDS[name]
        count = struct.calcsize(fmt) // (2 if fmt.endswith("h") else 4)
        values = draw(st.lists(HOSTILE_INTS if fmt.endswith("h") else HOSTILE_FLOATS, min_size=count, max_size=count))
        struct.pack_into(fmt, body, offset, *values)
    return bytes(body)


@st.composite
def bit_flips(draw) -> bytes:
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, min(len(body), 400) - 1))  # mostly the header
        body[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(body)


@functools.cache
def gzip_bomb(megabytes: int) -> bytes:
    return gzip.compress(VALID[:352] + bytes(megabytes * 2**20), compresslevel=9)


malformed = st.one_of(
    st.binary(max_size=2048),
    st.integers(0, len(VALID) - 1).map(lambda n: VALID[:n]),
    st.integers(0, len(VALID) - 1).map(lambda n: gzip.compress(VALID)[:n]),
    bit_flips(),
    hostile_header(),
    hostile_header().map(gzip.compress),
    st.sampled_from([64, 256]).map(gzip_bomb),
)


@st.composite
def uploads(draw) -> tuple[bytes, dict]:
    """(body, headers): mostly raw bodies, some multipart ones with broken framing."""
    body = draw(malformed)
    kind = draw(st.sampled_from(["raw", "raw", "raw", "multipart", "broken-multipart"]))
    if kind == "raw":
        return body, {"Content-Type": "application/octet-stream"}
    boundary = "fuzzboundary"
    part = b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="file"; filename="x.nii"\r\n\r\n' + body
    if kind == "multipart":
        part += b"\r\n--" + boundary.encode() + b"--\r\n"
    return part, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def fuzz(url: str, examples: int, seed: int = 0, after_each=None) -> Counter:
    """Post ``examples`` generated uploads; raises AssertionError on a 5xx or a lost answer.
    ``after_each(seconds)`` is called with each answer's time."""
    statuses: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(upload=uploads())
    def post(upload):
        body, headers = upload
        start = time.perf_counter()
        try:
            status = requests.post(f"{url}/v1/predict", data=body, headers=headers, timeout=60).status_code
        except requests.RequestException as err:
            raise AssertionError(f"no answer to a {len(body)}-byte upload: {err}") from None
        if after_each:
            after_each(time.perf_counter() - start)
        statuses[status] += 1
        assert status < 500, f"{status} for a {len(body)}-byte upload starting {body[:64]!r}"

    post()
    return statuses


def header_bomb(shape: tuple[int, ...] = (1024, 1024, 1000), data: bytes = b"") -> bytes:
    """A gzipped NIfTI header that claims ``shape`` float32 voxels, followed by only ``data``
    (under 70 bytes without)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    return gzip.compress(header.binaryblock + b"\0" * 4 + data)


def process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants now: for `brainomaly serve` or `score`, Ray's daemons and workers too."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a process that just ended
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree.update(children)
        frontier = children
    return tree


def server_memory(pid: int, field: str = "VmRSS", tree: set[int] | None = None) -> int:
    """Bytes of ``field`` (VmRSS now, VmHWM its peak) summed over ``pid`` and its descendants
    (``tree`` when already found): the `brainomaly serve` process, Ray's daemons and the replicas' workers."""
    total = 0
    for member in tree or process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) * 1024 for line in lines if line.startswith(f"{field}:"))
    return total


def bomb_drill(url: str, pid: int, count: int = 12) -> dict:
    """``count`` header bombs at once: each answer's time and the server's peak memory growth."""
    from concurrent.futures import ThreadPoolExecutor

    def post(_):
        start = time.perf_counter()
        status = requests.post(f"{url}/v1/predict", data=header_bomb(), timeout=60).status_code
        return status, time.perf_counter() - start

    peak_before = server_memory(pid, "VmHWM")
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(post, range(count)))
    return {"uploads": count, "bytes_each": len(header_bomb()), "statuses": sorted({s for s, _ in answers}),
            "slowest_s": round(max(t for _, t in answers), 3),
            "peak_memory_growth_mb": round((server_memory(pid, "VmHWM") - peak_before) / 2**20, 1),
            "ready_after": requests.get(f"{url}/readyz", timeout=30).status_code == 200}


def main() -> None:
    from serving.local_server import server_process

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--rss-budget-mb", type=float, default=512,
                        help="fail when the server's memory grows past its warmed-up size by more than this")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_upload.json")
    args = parser.parse_args()
    times, growth = [], []
    with server_process(REPO) as (url, process):
        requests.post(f"{url}/v1/predict", data=VALID, timeout=120).raise_for_status()  # warmed up: model, caches
        baseline = server_memory(process.pid)
        bombs = bomb_drill(url, process.pid)

        def after_each(seconds: float) -> None:
            times.append(seconds)
            growth.append(server_memory(process.pid) - baseline)
            assert growth[-1] <= args.rss_budget_mb * 2**20, f"server memory grew {growth[-1] / 2**20:.0f} MB"

        start = time.perf_counter()
        statuses = fuzz(url, args.examples, after_each=after_each)
        seconds = time.perf_counter() - start
        alive = requests.get(f"{url}/readyz", timeout=30).status_code == 200
    result = {"machine": machine(), "examples": sum(statuses.values()),
              "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "server_errors": sum(v for k, v in statuses.items() if k >= 500), "ready_after": alive,
              "seconds": round(seconds, 1),
              "answer_seconds": {"median": round(float(np.median(times)), 3), "p99": round(float(np.percentile(times, 99)), 3),
                                 "max": round(max(times), 3)},
              "server_memory_mb": {"warmed_up": round(baseline / 2**20), "max_growth": round(max(growth) / 2**20, 1),
                                   "budget": args.rss_budget_mb},
              "header_bombs_at_once": bombs}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"{result['examples']} fuzzed uploads in {result['seconds']} s")
    for column in ("statuses", "5xx", "answer s (median / p99 / max)", "memory growth MB (max / budget)",
                   f"{bombs['uploads']} header bombs at once: slowest s, peak growth MB"):
        table.add_column(column)
    a, m = result["answer_seconds"], result["server_memory_mb"]
    table.add_row(str(result["statuses"]), str(result["server_errors"]), f"{a['median']} / {a['p99']} / {a['max']}",
                  f"{m['max_growth']} / {m['budget']:g}", f"{bombs['slowest_s']}, {bombs['peak_memory_growth_mb']}")
    Console().print(table)


if __name__ == "__main__":
    main()
