"""The machine a process runs on: how many CPUs it may use, and what a measurement ran on, as
benchmarks record it (looked up, never written by hand)."""

from __future__ import annotations

import os
import platform
from concurrent.futures import ThreadPoolExecutor


def usable_cpus() -> int:
    """The CPUs this process may keep busy: OMP_NUM_THREADS where set (Ray sets it to a task's or
    an actor's CPUs), else the CPUs it may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        affinity = getattr(os, "sched_getaffinity", None)  # Linux only
        return len(affinity(0)) if affinity else os.cpu_count() or 1


_kept_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_kept_pools.clear)  # a forked child has none of the threads


def kept_threads(purpose: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` threads for ``purpose`` (their name's prefix), made once
    and kept: a new thread for every scan let a worker that prepares hundreds hold more and more
    memory (malloc's per-thread arenas). A pool per purpose, so work in one pool never waits on
    its own pool's threads. Two first callers at once make two pools: one is kept, the other
    never starts a thread."""
    key = (purpose, threads)
    if key not in _kept_pools:
        _kept_pools.setdefault(key, ThreadPoolExecutor(threads, thread_name_prefix=purpose))
    return _kept_pools[key]


def machine() -> str:
    """e.g. "2-core CPU (x86_64), no GPU" or "2-core CPU (x86_64), NVIDIA H200"."""
    cpus = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    try:
        import torch

        if torch.cuda.is_available():
            return f"{cpus}, {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return f"{cpus}, no GPU"


def native_bf16(device) -> bool:
    """Whether ``device`` (a torch.device) computes bf16 in hardware: a CUDA GPU that supports it,
    or a CPU with AVX-512 BF16 or AMX (oneDNN's bf16 convolutions). Elsewhere bf16 is emulated,
    and slower than fp32."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))

