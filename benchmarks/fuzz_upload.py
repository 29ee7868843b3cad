"""Fuzzing of the upload path: malformed uploads must get a 4xx (or a 200 when still a usable
scan), never a 5xx, a dropped connection or a dead server.

    python benchmarks/fuzz_upload.py [--examples 10000] [--output benchmarks/results/fuzz_upload.json]

Runs after `make run`: serves this repo's champion on a free port of 127.0.0.1 and posts
hypothesis-generated uploads: random bytes; a small valid scan truncated, bit-flipped, or with
header fields set to hostile values (dimensions, data type, voxel offset, voxel sizes, scaling,
orientation matrices), raw or gzipped; gzip bombs; broken multipart bodies. The run is bounded
by its example count and stops by itself. tests/serving/test_http_endpoint.py runs a few hundred
of the same examples in the test suite.
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


def fuzz(url: str, examples: int, seed: int = 0) -> Counter:
    """Post ``examples`` generated uploads; raises AssertionError on a 5xx or a lost answer."""
    statuses: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(upload=uploads())
    def post(upload):
        body, headers = upload
        try:
            status = requests.post(f"{url}/v1/predict", data=body, headers=headers, timeout=60).status_code
        except requests.RequestException as err:
            raise AssertionError(f"no answer to a {len(body)}-byte upload: {err}") from None
        statuses[status] += 1
        assert status < 500, f"{status} for a {len(body)}-byte upload starting {body[:64]!r}"

    post()
    return statuses


def main() -> None:
    from serving.local_server import running_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_upload.json")
    args = parser.parse_args()
    with running_server(REPO) as url:
        start = time.perf_counter()
        statuses = fuzz(url, args.examples)
        seconds = time.perf_counter() - start
        alive = requests.get(f"{url}/readyz", timeout=30).status_code == 200
    result = {"examples": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "server_errors": sum(v for k, v in statuses.items() if k >= 500), "ready_after": alive,
              "seconds": round(seconds, 1)}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['examples']} uploads in {result['seconds']} s: statuses {result['statuses']}, "
          f"5xx {result['server_errors']}, server ready after: {alive}")


if __name__ == "__main__":
    main()
