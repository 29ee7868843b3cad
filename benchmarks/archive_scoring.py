"""`brainomaly score` on archives of BraTS-sized volumes: scans a minute, and peak memory as the
archive grows, against posting the same volumes to the endpoint one by one.

    python benchmarks/archive_scoring.py [--sizes 24 192] [--endpoint-volumes 12] [--output benchmarks/results/archive_scoring.json]

Runs after `make run`, with this repo's registered champion and params. Each archive holds
copies of one 240x240x155 .nii.gz volume (a BraTS-layout phantom on BraTS's grid, as
benchmarks/serving_load.py builds it), in folders of 50. The process tree of each run (the
command, Ray's daemons and workers) is sampled every 0.25 s for its resident memory; for its
private part by role (the rest is mostly the pages of Ray's shared-memory object store that
each process has touched, counted once per process); and for each process's CPU seconds by
role. The roles are the command itself, the model actor, the Ray workers that ran the prepare
tasks, and Ray's own daemons and helpers. Ray's start is included in the wall time, as a user
waits for it. The difference between the largest and the smallest archive, per
volume, is what one more volume costs once everything has started. Where a volume's time goes
without Ray: the CPU seconds of reading, preparing and scoring one volume in this process on one
thread (a model actor's and a prepare task's share), the median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from components.machine import machine
from pipelines.params import load_params
from serving.local_server import running_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fuzz_upload import process_tree, server_memory  # noqa: E402
from benchmarks.serving_load import brats_sized_upload  # noqa: E402
from benchmarks.volume_verdicts import load_champion  # noqa: E402
from components.data.nifti_io import VolumeLimits, load_volume  # noqa: E402
from components.scoring.predictor import Upload, prepare_volume  # noqa: E402
BRAINOMALY = str(Path(sys.executable).parent / "brainomaly")


def write_archive(folder: Path, payload: bytes, volumes: int) -> Path:
    for index in range(volumes):
        path = folder / f"batch{index // 50:03d}" / f"scan{index:05d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return folder


TICKS = os.sysconf("SC_CLK_TCK")
HELPERS = "Ray's daemons and helpers"
ROLES = {"ray::MapWorker": "model actor", "ray::IDLE": "prepare tasks", "ray::Map(prepare)": "prepare tasks"}
RANK = {HELPERS: 0, "prepare tasks": 1, "model actor": 2, "brainomaly score": 3}  # a process keeps its highest


def role_and_cpu(pid: int, driver: int) -> tuple[str, float] | None:
    """What a process of the tree does, and the CPU seconds (user + system) it has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None  # it just ended: its last sample stands
    role = "brainomaly score" if pid == driver else next(
        (name for prefix, name in ROLES.items() if command.startswith(prefix)), HELPERS)
    return role, (int(fields[11]) + int(fields[12])) / TICKS


def sample_until_exit(process: subprocess.Popen) -> tuple[int, dict[str, int], dict[str, float]]:
    """The largest resident memory of ``process``'s tree; the largest private (anonymous) part
    of it by role, which leaves out the pages of Ray's shared-memory object store each process
    has touched; and the CPU seconds its processes used by role. Sampled every 0.25 s until it
    exits (a process's last sample counts, under the most specific role it was seen in: an idle
    worker's title is a prepare task's)."""
    peak, private, last = 0, {}, {}
    while process.poll() is None:
        tree = process_tree(process.pid)
        peak = max(peak, server_memory(process.pid, tree=tree))
        now: dict[str, int] = {"all": 0}
        for pid in tree:
            sample, before = role_and_cpu(pid, process.pid), last.get(pid)
            if sample and before and RANK[before[0]] > RANK[sample[0]]:  # a worker's title changes as it idles
                sample = before[0], sample[1]
            last[pid] = sample or before
            if last[pid]:
                size = server_memory(pid, "RssAnon", tree={pid})
                now[last[pid][0]] = now.get(last[pid][0], 0) + size
                now["all"] += size
        for role, size in now.items():
            private[role] = max(private.get(role, 0), size)
        time.sleep(0.25)
    by_role: dict[str, float] = {}
    for role, seconds in filter(None, last.values()):
        by_role[role] = by_role.get(role, 0.0) + seconds
    return (peak, {role: round(size / 2**20) for role, size in sorted(private.items())},
            {role: round(seconds, 1) for role, seconds in sorted(by_role.items())})


def score_archive(archive: Path, output: Path) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen([BRAINOMALY, "score", "--input", str(archive), "--output", str(output)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampled: list = []
    sampler = threading.Thread(target=lambda: sampled.extend(sample_until_exit(process)))
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"brainomaly score exited {process.returncode}")
    summary = json.loads(stdout)
    return {"volumes": summary["scans"], "scored": summary["scored"], "model": summary.get("model"),
            "wall_s": round(wall, 1),
            "volumes_per_minute": round(60 * summary["scored"] / wall, 1),
            "volumes_per_minute_after_start": summary["scans_per_minute"],
            "peak_memory_mb": round(sampled[0] / 2**20), "peak_private_memory_mb": sampled[1]["all"],
            "peak_private_memory_mb_by_role": {role: mb for role, mb in sampled[1].items() if role != "all"},
            "cpu_seconds_by_role": sampled[2]}


def one_more_volume(small: dict, large: dict) -> dict:
    """What each volume beyond the smaller archive cost: wall seconds (and the rate they make)
    and CPU seconds by role, Ray's start and the actor's loading left out."""
    extra = large["volumes"] - small["volumes"]
    wall = (large["wall_s"] - small["wall_s"]) / extra
    roles = large["cpu_seconds_by_role"]
    return {"wall_s": round(wall, 3), "volumes_per_minute": round(60 / wall, 1),
            "cpu_seconds_by_role": {role: round((roles[role] - small["cpu_seconds_by_role"].get(role, 0.0)) / extra, 3)
                                    for role in roles}}


def cpu_per_volume(params, payload: bytes, repeats: int = 5) -> dict:
    """CPU seconds (median of ``repeats``) to read, prepare and score one volume, on one thread."""
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # preparation's threads too, as Ray gives a prepare task of 1 CPU
    predictor = replace(load_champion(params), thin_slices=params.serve.thin_slices)  # as the model actors score
    stages: dict[str, list[float]] = {"read": [], "prepare": [], "score": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.nii.gz"
        path.write_bytes(payload)
        for _ in range(repeats + 1):  # the first warms up
            start = time.process_time()
            data, affine = load_volume(path)
            read = time.process_time()
            slices = prepare_volume(data, affine, predictor.bundle.preprocess, VolumeLimits())
            prepared = time.process_time()
            predictor.score_prepared([(Upload(None, affine), slices)])
            for stage, seconds in zip(stages, (read - start, prepared - read, time.process_time() - prepared)):
                stages[stage].append(seconds)
    return {stage: round(float(np.median(times[1:])), 3) for stage, times in stages.items()} | {"slices": len(slices.images)}


def endpoint_one_by_one(payload: bytes, volumes: int) -> dict:
    """The same volume posted ``volumes`` times in a row to `brainomaly serve`, one client."""
    with running_server(REPO) as url:
        requests.post(f"{url}/v1/predict", data=payload, timeout=300)  # warm-up
        start = time.perf_counter()
        for _ in range(volumes):
            assert requests.post(f"{url}/v1/predict", data=payload, timeout=300).status_code == 200
        wall = time.perf_counter() - start
    return {"volumes": volumes, "wall_s": round(wall, 1), "volumes_per_minute": round(60 * volumes / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 192])
    parser.add_argument("--endpoint-volumes", type=int, default=12)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "archive_scoring.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    payload = brats_sized_upload(params)
    runs = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            archive = write_archive(Path(tmp) / "archive", payload, size)
            runs.append(score_archive(archive, Path(tmp) / "results"))
    endpoint = endpoint_one_by_one(payload, args.endpoint_volumes)
    cpu = cpu_per_volume(params, payload)
    largest, smallest = max(runs, key=lambda run: run["volumes"]), min(runs, key=lambda run: run["volumes"])
    marginal = one_more_volume(smallest, largest) if largest["volumes"] > smallest["volumes"] else None
    result = {"machine": machine(), "model": largest["model"],
              "volume": {"shape": [240, 240, 155], "format": ".nii.gz", "bytes": len(payload)},
              "score": dict(params.score), "archives": runs, "endpoint_one_by_one": endpoint,
              "speedup_over_endpoint": round(largest["volumes_per_minute"] / endpoint["volumes_per_minute"], 2),
              "one_more_volume": marginal, "cpu_seconds_per_volume": cpu}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("how", "volumes", "wall s", "volumes/min", "peak memory MB", "of it private MB",
                  title="Scoring an archive of 240x240x155 scans")
    for run in runs:
        table.add_row("brainomaly score", str(run["volumes"]), str(run["wall_s"]), str(run["volumes_per_minute"]),
                      str(run["peak_memory_mb"]), str(run["peak_private_memory_mb"]))
    table.add_row("endpoint, one by one", str(endpoint["volumes"]), str(endpoint["wall_s"]),
                  str(endpoint["volumes_per_minute"]), "", "")
    Console().print(table)
    print(f"brainomaly score against the endpoint one by one: x{result['speedup_over_endpoint']}; "
          f"peak memory {', '.join(str(r['peak_memory_mb']) for r in runs)} MB for {', '.join(str(r['volumes']) for r in runs)} volumes")
    if marginal:
        costs = ", ".join(f"{role} {seconds}" for role, seconds in marginal["cpu_seconds_by_role"].items())
        print(f"one more volume, once started: {marginal['wall_s']} s ({marginal['volumes_per_minute']} a minute); "
              f"CPU seconds: {costs}")
    print(f"CPU seconds a volume on one thread ({cpu['slices']} slices): read {cpu['read']}, prepare {cpu['prepare']}, "
          f"score {cpu['score']}")


if __name__ == "__main__":
    main()
