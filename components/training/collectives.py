"""Data parallelism by hand, for detectors of any number of networks: gradients, loss sums and
BatchNorm statistics averaged over the workers of the current ``torch.distributed`` group.

Each collective runs on the device of the tensors it averages (the training device), so the
same code works under gloo on CPUs and NCCL on GPUs, which accepts CUDA tensors only. Without a
process group (one worker) every function leaves its input as it is.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import distributed as dist
from torch import nn


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def _average_flat(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` (one dtype and device) in place over the workers, with one all-reduce."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(chunk.view_as(tensor))


def sync_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """A detector's ``sync``: average each gradient over the workers, so every worker takes the
    same optimizer step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads and distributed():
        for group in _by_dtype_and_device(grads):
            _average_flat(group)


def mean_across_workers(sums: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Per-sample means of loss sums gathered on every worker (``count`` samples here)."""
    stacked = torch.tensor([*sums.values(), float(count)], dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(stacked)
    total = stacked[-1].clamp(min=1)
    return {key: float(value / total) for key, value in zip(sums, stacked[:-1])}


def sync_buffers(module: nn.Module) -> None:
    """Make every worker's buffers equal: floating ones (BatchNorm's running mean and variance)
    averaged, counters (``num_batches_tracked``) taken from rank 0. Without this each worker's
    statistics follow its own slices only, and the model exported from rank 0 is not the one
    the others evaluated."""
    buffers = list(module.buffers())
    if not buffers or not distributed():
        return
    for group in _by_dtype_and_device([b for b in buffers if b.is_floating_point()]):
        _average_flat(group)
    for buffer in (b for b in buffers if not b.is_floating_point()):
        dist.broadcast(buffer, src=0)


def _by_dtype_and_device(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())
