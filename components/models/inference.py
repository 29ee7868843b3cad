"""Batched inference through the detector interface: slices in, anomaly maps and slice scores out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from components.models.calibration import PRECISIONS, SCORE_REFERENCES, Calibration
from components.models.detector import Detector
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import ProcessedSlices, preprocess_volume

# Slices are scored channels-last (NHWC): oneDNN's CPU convolutions and a GPU's tensor cores run
# faster on it (benchmarks/detector_speed.py times both layouts), with the same maps up to float
# rounding.
INFERENCE_LAYOUT = torch.channels_last
# Slices per batch by device: on a CPU, 16 keep a 64 px network's activations within its cores'
# caches: a tenth faster than 64 for the served detector, up to a third for the iterative ones
# (benchmarks/inference_batch.py). A GPU wants larger batches to keep busy.
CPU_BATCH_SLICES, GPU_BATCH_SLICES = 16, 64


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
                 deadline: float | None = None, precision: str = "fp32", progress: str | None = None) -> Scored:
    """Maps and scores of preprocessed slices, in batches (``batch_size``, or the device's own:
    CPU_BATCH_SLICES or GPU_BATCH_SLICES) on the detector's device, in
    ``precision`` ("bf16": autocast; maps and scores come back as float32), with a progress bar
    named ``progress`` (none by default: the endpoint scores quietly). Not under
    ``no_grad`` as a whole: a detector may optimise at inference (a latent search). Past
    ``deadline`` (time.monotonic()) it stops before the next batch with TimeoutError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    detector.eval().to(memory_format=INFERENCE_LAYOUT)
    device = detector.device
    batch_size = batch_size or (CPU_BATCH_SLICES if device.type == "cpu" else GPU_BATCH_SLICES)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    maps, scores, levels, alternatives = [], [], [], {}
    bar = tqdm(total=len(images), desc=progress, unit="slice", disable=progress is None)
    for start in range(0, len(images), batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"scoring stopped past its deadline, {start} of {len(images)} slices done")
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = x.contiguous(memory_format=INFERENCE_LAYOUT)
        m = torch.from_numpy(np.ascontiguousarray(brain[start : start + batch_size])).to(device)
        with autocast:
            inspection = detector.inspect(x, m)
        maps.append(inspection.maps.float().cpu().numpy())
        scores.append(inspection.scores.float().cpu().numpy())
        level = inspection.levels if inspection.levels is not None else detector.map_level(inspection.maps, m)
        levels.append(level.float().cpu().numpy())
        for name, values in inspection.alternatives.items():
            alternatives.setdefault(name, []).append(values.float().cpu().numpy())
        bar.update(len(x))
    bar.close()
    if not maps:
        return Scored(np.zeros_like(images), np.zeros(0, np.float32), {}, np.zeros(0, np.float32))
    return Scored(np.concatenate(maps), np.concatenate(scores), {k: np.concatenate(v) for k, v in alternatives.items()},
                  np.concatenate(levels))


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
