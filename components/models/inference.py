"""Batched inference through the detector interface: slices in, anomaly maps and slice scores out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from components.machine import kept_threads, usable_cpus
from components.models.calibration import PRECISIONS, SCORE_REFERENCES, Calibration
from components.models.detector import Detector
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import ProcessedSlices, preprocess_volume

# Slices are scored channels-last (NHWC): oneDNN's CPU convolutions and a GPU's tensor cores run
# faster on it (benchmarks/detector_speed.py times both layouts), with the same maps up to float
# rounding.
INFERENCE_LAYOUT = torch.channels_last
# Slices per batch at most; a CPU scores one batch per core at once (``scoring_threads``). On 2
# cores the served detector scores a BraTS-sized scan's 49 thin slices in 0.19 s so, against
# 0.29 s in batches of 16 one at a time (bf16, benchmarks/inference_batch.py); a GPU wants large
# batches to keep busy.
BATCH_SLICES = 64


def resolve_device(name: str) -> torch.device:
    """"auto": the first CUDA device when one is visible (under Ray, one the task was given),
    else the CPU; "cpu"; "cuda" or "cuda:N", refused with a clear message when absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} asked for, but {torch.cuda.device_count()} CUDA devices are visible: "
                         "use 'auto' or 'cpu'")
    return device


def relative_to_scan(scores: np.ndarray, scans: np.ndarray | None = None) -> np.ndarray:
    """Each slice score divided by the median slice score of its scan (``scans``: each slice's
    scan id; None: all one scan). A scanner that raises a whole map (its noise, blur or contrast)
    raises the scan's median with it, so a threshold on these scores travels between sites; a
    tumour spanning half a scan's slices raises it too, the price paid."""
    scores = np.asarray(scores, np.float64)
    scans = np.zeros(len(scores), int) if scans is None else np.asarray(scans)
    medians = pd.Series(scores).groupby(scans).transform("median").to_numpy()
    return (scores / np.maximum(medians, np.finfo(np.float32).tiny)).astype(np.float32)


def relative_to_level(scores: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each slice score divided by its slice's typical residual (``Detector.map_level``): how far
    the map's brightest part stands above the rest of the same slice. A scanner that raises the
    whole map raises both, and a tumour, a few per cent of the brain, barely moves the median;
    a slice with no residual at all scores 0."""
    scores, levels = np.asarray(scores, np.float64), np.asarray(levels, np.float64)
    relative = np.divide(scores, levels, out=np.zeros_like(scores), where=levels > np.finfo(np.float32).tiny)
    return relative.astype(np.float32)


def with_reference(scored: "Scored", reference: str, scans: np.ndarray | None = None) -> "Scored":
    """``scored`` with its slice scores relative to ``reference``: "none", as the detector gave
    them; "scan_median", its scan's median slice score (``scans``: each slice's scan id);
    "brain_median", its own slice's typical residual."""
    if reference not in SCORE_REFERENCES:
        raise ValueError(f"score reference {reference!r}: expected one of {', '.join(SCORE_REFERENCES)}")
    if reference == "scan_median":
        return scored._replace(scores=relative_to_scan(scored.scores, scans))
    if reference == "brain_median":
        return scored._replace(scores=relative_to_level(scored.scores, scored.levels))
    return scored


class Scored(NamedTuple):
    maps: np.ndarray  # (N, 1, S, S) anomaly maps, zero outside the brain
    scores: np.ndarray  # (N,) slice scores
    alternatives: dict[str, np.ndarray]  # the detector's other slice scores, by name
    levels: np.ndarray  # (N,) each slice's typical residual (Detector.map_level)


def score_slices(detector: Detector, images: np.ndarray, brain: np.ndarray, batch_size: int | None = None,
                 deadline: float | None = None, precision: str = "fp32", progress: str | None = None,
                 threads: int | None = None) -> Scored:
    """Maps and scores of preprocessed slices, in even batches of at most ``batch_size`` (by
    default BATCH_SLICES) on the detector's device, in
    ``precision`` ("bf16": autocast; maps and scores come back as float32), with a progress bar
    named ``progress`` (none by default: the endpoint scores quietly), ``threads`` batches at once
    (by default ``scoring_threads``: on a CPU one per core). Not under
    ``no_grad`` as a whole: a detector may optimise at inference (a latent search). Past
    ``deadline`` (time.monotonic()) it stops before the next batch with TimeoutError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    detector.eval().to(memory_format=INFERENCE_LAYOUT)
    device = detector.device
    batch_size, threads = batch_size or BATCH_SLICES, threads or scoring_threads(device)

    def score_batch(part: range) -> Scored:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"scoring stopped past its deadline, before slice {part.start} of {len(images)}")
        x = torch.from_numpy(np.ascontiguousarray(images[part.start : part.stop])).to(device)
        x = x.contiguous(memory_format=INFERENCE_LAYOUT)
        m = torch.from_numpy(np.ascontiguousarray(brain[part.start : part.stop])).to(device)
        # autocast is per thread: entered by the thread that scores
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            inspection = detector.inspect(x, m)
        level = inspection.levels if inspection.levels is not None else detector.map_level(inspection.maps, m)
        return Scored(*(t.float().cpu().numpy() for t in (inspection.maps, inspection.scores)),
                      {name: values.float().cpu().numpy() for name, values in inspection.alternatives.items()},
                      level.float().cpu().numpy())

    parts = even_batches(len(images), batch_size, threads)
    at_once = min(threads, len(parts))
    batches = kept_threads("score", at_once).map(score_batch, parts) if at_once > 1 else map(score_batch, parts)
    done = []
    with tqdm(total=len(images), desc=progress, unit="slice", disable=progress is None) as bar:
        for batch in batches:  # in order; past an error the batches not yet started are cancelled
            done.append(batch)
            bar.update(len(batch.scores))
    if not done:
        return Scored(np.zeros_like(images), np.zeros(0, np.float32), {}, np.zeros(0, np.float32))
    return Scored(np.concatenate([b.maps for b in done]), np.concatenate([b.scores for b in done]),
                  {name: np.concatenate([b.alternatives[name] for b in done]) for name in done[0].alternatives},
                  np.concatenate([b.levels for b in done]))


def even_batches(count: int, batch_size: int, threads: int) -> list[range]:
    """``count`` slices cut into batches of at most ``batch_size``, as many as a multiple of
    ``threads`` and as even as can be, so every round keeps every thread busy to its end."""
    rounds = -(-count // (batch_size * threads))
    bounds = np.linspace(0, count, rounds * threads + 1).round().astype(int)
    return [range(start, stop) for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]


def scoring_threads(device: torch.device) -> int:
    """Batches scored at once: on a CPU one per usable core, as two batches at once keep two
    cores busier than one batch's operations split between them (benchmarks/inference_batch.py
    --threads); on a GPU one, whose own stream is the parallelism."""
    return usable_cpus() if device.type == "cpu" else 1


def reconstruct_slices(detector: Detector, images: np.ndarray) -> np.ndarray:
    """The detector's reconstructions of preprocessed slices (figures), computed on its own
    device and returned as float32 arrays on the CPU."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(detector.device).contiguous(memory_format=INFERENCE_LAYOUT)
    return detector.to(memory_format=INFERENCE_LAYOUT).reconstruct(x).detach().float().cpu().numpy()


def score_volume(detector: Detector, spec: PreprocessSpec, data: np.ndarray, affine: np.ndarray,
                 calibration: Calibration, deadline: float | None = None) -> tuple[ProcessedSlices, Scored]:
    """One (X, Y, Z) skull-stripped volume through the model's own recipe, then scored as
    ``calibration`` says (its score reference and precision): the registered model's path from a
    scan to slice scores, and the endpoint's, which takes the same two steps for several uploads
    at once (the brain mask comes from the recipe, never from the intensities' sign)."""
    slices = preprocess_volume(data, affine, spec)
    (scored,) = score_volumes(detector, [slices], calibration, deadline)
    return slices, scored


def score_volumes(detector: Detector, volumes: Sequence[ProcessedSlices], calibration: Calibration,
                  deadline: float | None = None) -> list[Scored]:
    """Several preprocessed volumes' slices scored in shared batches (a GPU stays busy when each
    upload alone would not fill it), split back per volume, each then made relative to its own
    scan. Every detector scores a slice without looking at its batch neighbours, so a volume gets
    the scores it would get alone, up to floating-point rounding."""
    if not volumes:
        return []
    images = np.concatenate([v.images for v in volumes])
    brain = np.concatenate([v.brain for v in volumes])
    scored = score_slices(detector, images, brain, deadline=deadline, precision=calibration.precision)
    bounds = np.cumsum([len(v.images) for v in volumes])[:-1]
    parts = zip(*(np.split(field, bounds) for field in (scored.maps, scored.scores, scored.levels)),
                *(np.split(values, bounds) for values in scored.alternatives.values()))
    return [with_reference(Scored(maps, scores, dict(zip(scored.alternatives, rest)), levels), calibration.score_reference)
            for maps, scores, levels, *rest in parts]
