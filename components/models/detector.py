"""The one interface every detector implements, so training, evaluation, tuning and serving
never branch on the model name.

- ``make_optimizers(lr)``: the optimizers its networks need, by name (one for an autoencoder;
  generator and discriminator for adversarial detectors).
- ``train_step(x, optimizers, sync)``: one update on a batch of healthy slices, however many
  networks and alternating steps that takes; ``sync(parameters)`` must be called on each
  group's gradients before its optimizer steps (it averages them across data-parallel workers,
  and does nothing on one worker). Returns the loss parts as floats.
- ``validation_losses(x)``: the same loss parts without an update (the caller sets eval mode).
- ``anomaly_map(x)``: per-pixel anomaly, (N, 1, H, W); ``slice_score(x, maps, brain)``: per
  slice, (N,), by default the mean of the map inside the brain.
- Saving and loading is ``state_dict``: every network is a submodule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable

import torch
from torch import nn

Sync = Callable[[Iterable[nn.Parameter]], None]


def no_sync(parameters: Iterable[nn.Parameter]) -> None:
    """The ``sync`` of a single process: gradients are already complete."""


class Detector(nn.Module, ABC):
    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=learning_rate)}

    @abstractmethod
    def train_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]: ...

    @abstractmethod
    def validation_losses(self, x: torch.Tensor) -> dict[str, float]: ...

    @abstractmethod
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor: ...

    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Mean anomaly inside the brain, (N,)."""
        area = brain.flatten(1).sum(1).clamp(min=1)
        return (maps * brain).flatten(1).sum(1) / area


class ReconstructionDetector(Detector):
    """A detector that reconstructs its input: one loss, one optimizer, |x - x_hat| as the map."""

    @abstractmethod
    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...

    @abstractmethod
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...

    def train_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        optimizer = optimizers["model"]
        loss, parts = self.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(self.parameters())
        optimizer.step()
        return parts

    @torch.no_grad()
    def validation_losses(self, x: torch.Tensor) -> dict[str, float]:
        return self.loss(x)[1]

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.reconstruct(x)).abs()
