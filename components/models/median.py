"""An in-plane median filter for batches of anomaly maps, as a selection network.

torch's ``median`` over unfolded windows picks each pixel's median by a general selection, slow
on a CPU. A comparator network (Batcher's odd-even merge sort, Knuth TAOCP vol. 3, 5.3.4, with
the comparators that cannot reach the middle position removed) finds the same median with
elementwise minima and maxima over shifted copies of the maps: exactly the same values, on any
device, at a sixth of the cost on one CPU thread (`python benchmarks/median_filter.py`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.nn import functional as F


def odd_even_merge_sort(count: int) -> list[tuple[int, int]]:
    """Batcher's comparators (low, high) that sort ``count`` values, in order."""
    pairs, run = [], 1
    while run < count:
        gap = run
        while gap >= 1:
            for start in range(gap % run, count - gap, 2 * gap):
                for i in range(min(gap, count - start - gap)):
                    if (i + start) // (2 * run) == (i + start + gap) // (2 * run):
                        pairs.append((i + start, i + start + gap))
            gap //= 2
        run *= 2
    return pairs


@lru_cache(maxsize=None)
def median_network(count: int) -> tuple[tuple[int, int], ...]:
    """The comparators of ``odd_even_merge_sort(count)`` that can move a value into position
    ``count // 2``: found backwards from that position, each one touching a wire that still matters."""
    needed, kept = {count // 2}, []
    for low, high in reversed(odd_even_merge_sort(count)):
        if low in needed or high in needed:
            kept.append((low, high))
            needed |= {low, high}
    return tuple(reversed(kept))


def median_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """In-plane median of each (N, C, H, W) map over size x size pixels (zero padding; size odd)."""
    if size % 2 == 0:
        raise ValueError(f"median filter size must be odd, got {size}")
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (size // 2,) * 4)
    wires = [padded[..., dy : dy + height, dx : dx + width] for dy in range(size) for dx in range(size)]
    for low, high in median_network(size * size):
        wires[low], wires[high] = torch.minimum(wires[low], wires[high]), torch.maximum(wires[low], wires[high])
    return wires[len(wires) // 2].contiguous()
