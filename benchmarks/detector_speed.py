"""Training throughput and inference time per slice of every detector, on this machine.

    python benchmarks/detector_speed.py [--device cpu|cuda] [--precision fp32|bf16] [--channels-last]
                                        [--output benchmarks/results/detector_speed_<device>.json]

Each detector is built as `brainomaly compare` builds it (params.yaml's model section with
compare.overrides merged in) for 64 px slices, and timed on random batches of 32 slices: its
``train_step`` (every network and optimizer step it takes; channels-last with ``--channels-last``),
then ``inspect`` (map + scores, the latent search or the denoising included) channels-last, as
every scoring path runs it, and channels-first for comparison (time, and the largest difference
between the two layouts' maps), each after a warm-up, in one process with all threads.
The anovaegan paper's Table 1 reports the same: time per reconstructed slice, same batch, same
device. On a GPU, ``--precision bf16 --channels-last`` is the recommended training recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from components.models.detector import Slices
from components.models.inference import INFERENCE_LAYOUT
from components.models.registry import build_detector, contrast_residual, data_hyperparams
from pipelines.params import load_params

REPO = Path(__file__).resolve().parents[1]
SIZE, BATCH = 64, 32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``function()`` over ``repeats`` calls, after one warm-up call."""
    function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def compare_hyperparams(params, name: str) -> dict:
    """The detector's model settings as `brainomaly compare` trains it (compare.overrides merged in)."""
    settings = {**(params.model.model_extra or {}).get(name, {}), **params.compare.overrides.get(name, {}).get("model", {})}
    return contrast_residual(settings, params.data.modality)


def measure(name: str, hyperparams: dict, device: torch.device, precision: str, channels_last: bool, repeats: int,
            size: int = SIZE, batch_size: int = BATCH) -> dict:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    detector = build_detector(name, **hyperparams, **data_hyperparams(name, size, (0.0, 1.0))).to(device, memory_format=layout)
    x = torch.rand(batch_size, 1, size, size, device=device).contiguous(memory_format=layout)
    brain = torch.ones_like(x, dtype=torch.bool)
    batch = Slices(x, brain, Slices(x, brain))
    optimizers = detector.make_optimizers(1e-4)
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731

    def train():
        with amp():
            detector.train_step(batch, optimizers)

    def infer_in(memory_format: torch.memory_format) -> float:
        """ms a slice of ``inspect`` with the detector and its input in ``memory_format``."""
        detector.to(memory_format=memory_format)
        slices = x.contiguous(memory_format=memory_format)

        def infer():
            with amp():
                detector.inspect(slices, brain)

        return round(1000 * timed(infer, device, max(1, repeats // 2)) / batch_size, 3)

    def maps_in(memory_format: torch.memory_format) -> torch.Tensor:
        """The maps of one ``inspect`` in ``memory_format``, from the same random draws."""
        detector.to(memory_format=memory_format)
        torch.manual_seed(1)
        with amp():
            return detector.inspect(x.contiguous(memory_format=memory_format), brain).maps.detach().float()

    detector.train()
    train_seconds = timed(train, device, repeats)
    detector.eval()
    difference = (maps_in(torch.contiguous_format) - maps_in(INFERENCE_LAYOUT)).abs().max().item()
    return {"detector": name, "parameters_m": round(sum(p.numel() for p in detector.parameters()) / 1e6, 2),
            "train_slices_per_s": round(batch_size / train_seconds, 1),
            "channels_first_ms_per_slice": infer_in(torch.contiguous_format),
            "inference_ms_per_slice": infer_in(INFERENCE_LAYOUT), "layouts_max_map_difference": difference}


def machine_name(device: torch.device) -> str:
    return (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true", help="train channels-last (inference always is)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    params = load_params(REPO / "params.yaml")
    runs = []
    for name in params.compare.detectors:
        runs.append(measure(name, compare_hyperparams(params, name), device, args.precision, args.channels_last, args.repeats))
        Console(stderr=True).print(f"{name}: {runs[-1]}")
    machine = machine_name(device)
    record = {"benchmark": f"detector speed, batches of {BATCH} slices of {SIZE} px, compare settings",
              "machine": machine, "precision": args.precision, "train_channels_last": args.channels_last,
              "inference_layout": "channels_last", "runs": runs}
    output = args.output or REPO / "benchmarks" / "results" / f"detector_speed_{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    table = Table(title=f"{record['benchmark']} ({machine}, {args.precision})")
    for column in ("detector", "parameters (M)", "train slices/s", "inference ms/slice", "channels-first ms/slice"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    for r in runs:
        table.add_row(r["detector"], f"{r['parameters_m']:.2f}", f"{r['train_slices_per_s']:.1f}",
                      f"{r['inference_ms_per_slice']:.2f}", f"{r['channels_first_ms_per_slice']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
