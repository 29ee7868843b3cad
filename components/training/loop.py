"""The training loop every data-parallel worker runs, without Ray.

Epochs of healthy batches through the detector's ``train_step``, data parallelism over whatever
``torch.distributed`` process group the caller set up (gloo on CPUs, NCCL on GPUs, none for one
process), validation on rank 0, and the state a checkpoint holds. `pipelines/train.py` feeds it
Ray Datasets shards and reports through Ray Train; the tests feed it tensors under a process
group made by hand. Every collective runs on the training device, the one place NCCL accepts.

Example::

    detector.to(device)
    optimizers = detector.make_optimizers(1e-3)
    run_epochs(detector, optimizers, LoopData(train=lambda: batches), LoopSettings(epochs=5), device,
               report=lambda metrics, state: print(metrics))
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from components.data.augment import AugmentSpec, augment
from components.models.detector import Detector, Slices
from components.training.collectives import mean_across_workers, rank_and_world, sync_buffers, sync_gradients

Batches = Callable[[], Iterable[dict]]  # one pass: dicts of "image" and "brain" tensors (and "rated", "abnormal")
Report = Callable[[dict, "dict | None"], None]  # (epoch metrics, checkpoint state on rank 0, else None)


@dataclass(frozen=True)
class LoopSettings:
    epochs: int = 1
    precision: str = "fp32"  # "bf16": mixed precision through torch.autocast
    channels_last: bool = False
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    background: float = 0.0  # the preprocessed scans' background value, kept by augmentation
    output_range: tuple[float, float] | None = None  # augmented intensities are clipped to it
    seed: int = 0  # this worker's unlabelled batches are shuffled from it


@dataclass(frozen=True)
class LoopData:
    """What one worker iterates over; each callable starts a new pass."""

    train: Batches  # this worker's share of an epoch's healthy training slices
    val: Batches | None = None  # healthy validation slices, read by rank 0
    tumour_val: Batches | None = None  # the tumour cohort's labelled val slices (val_slice_auroc), rank 0
    unlabelled: list[Slices] | None = None  # this worker's tumour-cohort batches, for detectors that use them


def layout(settings: LoopSettings) -> torch.memory_format:
    return torch.channels_last if settings.channels_last else torch.contiguous_format


def autocast(settings: LoopSettings, device: torch.device):
    """bf16 mixed precision when the settings ask for it (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")


def checkpoint_state(detector: nn.Module, optimizers: dict[str, torch.optim.Optimizer], epoch: int) -> dict:
    return {"model": detector.state_dict(), "epoch": epoch,
            "optimizers": {name: o.state_dict() for name, o in optimizers.items()}}


def prepare(detector: Detector, learning_rate: float, device: torch.device, settings: LoopSettings,
            state: dict | None = None) -> tuple[dict[str, torch.optim.Optimizer], int]:
    """Move ``detector`` to the device, restore ``state`` (a ``checkpoint_state``) if any, and
    return its optimizers and the first epoch to train."""
    if state:
        detector.load_state_dict(state["model"])
    detector.to(device, memory_format=layout(settings))
    # Created after the move, so a restored optimizer state lands on the parameters' device.
    optimizers = detector.make_optimizers(learning_rate)
    if state:
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
    return optimizers, state["epoch"] + 1 if state else 0


def endless(batches: list[Slices], seed: int):
    """The batches in a new random order on each pass, without end."""
    rng = random.Random(seed)
    for _ in itertools.count():
        yield from rng.sample(batches, len(batches))


def train_epoch(detector: Detector, optimizers: dict, batches: Iterable[dict], unlabelled, settings: LoopSettings,
                device: torch.device) -> dict[str, float]:
    """One pass over this worker's batches; the loss parts averaged over every worker's slices."""
    detector.train()
    sums, count = {}, 0
    for batch in batches:
        x = augment(batch["image"], batch["brain"], settings.augment, settings.background, settings.output_range)
        x = x.contiguous(memory_format=layout(settings))
        slices = Slices(x, batch["brain"], next(unlabelled) if unlabelled else None)
        with autocast(settings, device):
            parts = detector.train_step(slices, optimizers, sync_gradients)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value * len(x)
        count += len(x)
    return {**mean_across_workers(sums, count, device), "slices": count}


@torch.no_grad()
def validation_losses(detector: Detector, batches: Iterable[dict]) -> dict[str, float]:
    """The detector's loss parts over the healthy validation slices, in eval mode."""
    detector.eval()
    sums, count = {}, 0
    for batch in batches:
        for key, value in detector.validation_losses(Slices(batch["image"], batch["brain"])).items():
            sums[key] = sums.get(key, 0.0) + value * len(batch["image"])
        count += len(batch["image"])
    return {f"val_{k}": v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def validation_auroc(detector: Detector, batches: Iterable[dict]) -> dict[str, float]:
    """Slice AUROC over the tumour cohort's val slices, on the slices whose label is rated
    (``rated``: evaluate's slice label, other lesions left out); empty when one class is missing."""
    detector.eval()
    scores, labels = [], []
    for batch in batches:
        rated = batch["rated"].bool()
        if rated.any():
            scores.append(detector.inspect(batch["image"][rated], batch["brain"][rated]).scores.float().cpu())
            labels.append(batch["abnormal"][rated].cpu())
    labels = torch.cat(labels).numpy() if labels else np.zeros(0, bool)
    if labels.all() or not labels.any():
        return {}
    return {"val_slice_auroc": float(roc_auc_score(labels, torch.cat(scores).numpy()))}


def run_epochs(detector: Detector, optimizers: dict, data: LoopData, settings: LoopSettings, device: torch.device,
               report: Report, start_epoch: int = 0) -> None:
    """Train epochs ``start_epoch`` .. ``settings.epochs - 1``. After each, every worker holds the
    same weights (averaged gradients) and the same BatchNorm statistics (averaged buffers), and
    calls ``report(metrics)``; rank 0 adds validation metrics and the checkpoint state."""
    rank, world = rank_and_world()
    unlabelled = endless(data.unlabelled, settings.seed) if data.unlabelled else None
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        parts = train_epoch(detector, optimizers, data.train(), unlabelled, settings, device)
        sync_buffers(detector)  # each worker's running statistics saw only its own slices
        slices = parts.pop("slices")
        metrics = {f"train_{k}": v for k, v in parts.items()} | {"epoch": epoch, "resumed_from_epoch": start_epoch}
        metrics["train_slices_per_s"] = slices * world / (time.perf_counter() - started)
        if rank != 0:
            report(metrics, None)
            continue
        with autocast(settings, device):
            if data.val:
                metrics |= validation_losses(detector, data.val())
            if data.tumour_val:
                metrics |= validation_auroc(detector, data.tumour_val())
        report(metrics, checkpoint_state(detector, optimizers, epoch))
