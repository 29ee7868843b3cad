"""The focal score's 5 x 5 median filter: torch's median over unfolded windows against the
comparator network of components/models/median.py, on one batch of 64-px maps.

    python benchmarks/median_filter.py [--threads 1 2] [--batch 64] [--repeats 20]
                                       [--output benchmarks/results/median_filter.json]

Both run on the same random maps (a third of the pixels zero, as outside a brain) after a
warm-up (the median of the calls' times), on the CPU with the thread counts given; their outputs
are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.atomic import write_json  # noqa: E402
from components.machine import machine  # noqa: E402
from components.models.detector import MAP_MEDIAN  # noqa: E402
from components.models.median import median_filter  # noqa: E402


def unfolded_median(maps: torch.Tensor, size: int) -> torch.Tensor:
    """The filter as torch alone gives it: every window unfolded, then its median."""
    height, width = maps.shape[-2:]
    return F.unfold(maps, size, padding=size // 2).median(dim=1).values.view(-1, 1, height, width)


def milliseconds(function, repeats: int) -> float:
    """The median of ``repeats`` timed calls after a warm-up: a neighbour's burst moves it less than a mean."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/median_filter.json")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(args.batch, 1, 64, 64, generator=generator)
    maps = maps * (torch.rand(maps.shape, generator=generator) > 1 / 3)
    if not torch.equal(median_filter(maps, MAP_MEDIAN), unfolded_median(maps, MAP_MEDIAN)):
        raise SystemExit("the comparator network and torch's median disagree")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch_ms = milliseconds(lambda: unfolded_median(maps, MAP_MEDIAN), args.repeats)
        network_ms = milliseconds(lambda: median_filter(maps, MAP_MEDIAN), args.repeats)
        rows.append({"threads": threads, "torch_median_ms": round(torch_ms, 2), "network_ms": round(network_ms, 2),
                     "speedup": round(torch_ms / network_ms, 2)})
    write_json(args.output, {"machine": machine(), "maps": [args.batch, 1, 64, 64], "window": MAP_MEDIAN, "rows": rows})
    table = Table("threads", "torch median ms", "network ms", "speedup",
                  title=f"{MAP_MEDIAN}x{MAP_MEDIAN} median filter over {args.batch} maps of 64 x 64")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")


if __name__ == "__main__":
    main()
