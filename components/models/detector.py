"""The one interface every detector implements, so training, evaluation, tuning and serving
never branch on the model name.

- ``make_optimizers(lr)``: the optimizers its networks need, by name (one for an autoencoder;
  generator and discriminator for adversarial detectors).
- ``train_step(batch, optimizers, sync)``: one update on a ``Slices`` batch of healthy slices,
  however many networks and alternating steps that takes; ``sync(parameters)`` must be called
  on each group's gradients before its optimizer steps (it averages them across data-parallel
  workers, and does nothing on one worker). Returns the loss parts as floats. A detector with
  ``uses_unlabelled = True`` (the dual VAE) also gets ``batch.unlabelled``: slices of the
  tumour cohort's training split, their labels never read.
- ``validation_losses(batch)``: the same loss parts without an update (the caller sets eval mode).
- ``anomaly_map(x, brain)``: per-pixel anomaly, (N, 1, H, W); ``slice_score(x, maps, brain)``:
  per slice, (N,), by default the mean of the map inside the brain; ``alternative_scores``:
  other slice scores the detector's paper compares against (reported, never thresholded).
  ``inspect(x, brain)`` returns all three (masked to the brain); a detector whose scores share
  costly work (a latent search) overrides it to do that work once. ``reconstruct(x)``: the
  normal-looking slice the detector compares x with (figures show it beside the map).
- Saving and loading is ``state_dict``: every network is a submodule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, NamedTuple, Optional

import torch
from torch import nn

Sync = Callable[[Iterable[nn.Parameter]], None]


class Inspection(NamedTuple):
    maps: torch.Tensor  # (N, 1, H, W), zero outside the brain
    scores: torch.Tensor  # (N,)
    alternatives: dict[str, torch.Tensor]  # named (N,) scores


class Slices(NamedTuple):
    image: torch.Tensor  # (N, 1, H, W) preprocessed slices
    brain: torch.Tensor  # (N, 1, H, W) bool brain mask
    unlabelled: Optional["Slices"] = None  # tumour-cohort slices, for detectors that use them


def no_sync(parameters: Iterable[nn.Parameter]) -> None:
    """The ``sync`` of a single process: gradients are already complete."""


def mean_in_brain(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Mean of each map inside its brain mask, (N,)."""
    area = brain.flatten(1).sum(1).clamp(min=1)
    return (maps * brain).flatten(1).sum(1) / area


class Detector(nn.Module, ABC):
    uses_unlabelled = False
    trainable = True  # False: nothing to learn (the intensity baseline); training passes over the data once

    @property
    def device(self) -> torch.device:
        """Where its networks live (the CPU for a detector without any)."""
        return next(iter([*self.parameters(), *self.buffers()]), torch.empty(0)).device

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=learning_rate)}

    @abstractmethod
    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]: ...

    @abstractmethod
    def validation_losses(self, batch: Slices) -> dict[str, float]: ...

    @abstractmethod
    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...

    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Mean anomaly inside the brain, (N,)."""
        return mean_in_brain(maps, brain)

    def alternative_scores(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named (N,) slice scores to compare with ``slice_score`` (e.g. x - x' against z - z')."""
        return {}

    def inspect(self, x: torch.Tensor, brain: torch.Tensor) -> Inspection:
        maps = (self.anomaly_map(x, brain) * brain).detach()
        with torch.no_grad():
            return Inspection(maps, self.slice_score(x, maps, brain), self.alternative_scores(x, maps, brain))


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: list[nn.Parameter], sync: Sync) -> None:
    """One optimizer step on ``loss`` with its gradients synced across workers first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sync(parameters)
    optimizer.step()


class ReconstructionDetector(Detector):
    """A detector that reconstructs its input: one loss, one optimizer, |x - x_hat| as the map."""

    @abstractmethod
    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]: ...

    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        loss, parts = self.loss(batch)
        step(optimizers["model"], loss, list(self.parameters()), sync)
        return parts

    @torch.no_grad()
    def validation_losses(self, batch: Slices) -> dict[str, float]:
        return self.loss(batch)[1]

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return (x - self.reconstruct(x)).abs()
