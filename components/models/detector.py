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
  per slice, (N,), by default ``focal_score``: the mean of the brightest ``top_fraction`` of the
  median-filtered map inside the eroded brain. A lesion is local: the map's mean dilutes a small
  one by the brain's area and adds up diffuse residual (another scanner's noise, blur or
  contrast), so it neither ranks slices nor holds its threshold on another site
  (docs/sites.md "Across sites"). ``alternative_scores``: other slice scores the detector's paper compares
  against, and by default the map's mean (reported, never thresholded).
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
from torch.nn import functional as F

from components.models.median import median_filter

MAP_MEDIAN = 5  # px: the focal slice score's in-plane median (the paper's pixel-protocol window)
Sync = Callable[[Iterable[nn.Parameter]], None]


class Inspection(NamedTuple):
    maps: torch.Tensor  # (N, 1, H, W), zero outside the brain
    scores: torch.Tensor  # (N,)
    alternatives: dict[str, torch.Tensor]  # named (N,) scores
    levels: Optional[torch.Tensor] = None  # (N,) each slice's typical residual, where not Detector.map_level(maps)


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


def median_in_brain(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Median of each map inside its brain mask, (N,); 0 for a slice without brain."""
    inside = maps.flatten(1).float().masked_fill(~brain.flatten(1), float("nan"))
    return inside.nanmedian(dim=1).values.nan_to_num(0.0)


def erode(brain: torch.Tensor) -> torch.Tensor:
    """The brain mask less its one-pixel rim, where another site's partial volume differs most."""
    return brain & ~F.max_pool2d((~brain).float(), 3, stride=1, padding=1).bool()


def focal_score(maps: torch.Tensor, brain: torch.Tensor, top_fraction: float, median: int = MAP_MEDIAN) -> torch.Tensor:
    """Mean of each slice's brightest ``top_fraction`` of its median-filtered map inside the eroded
    brain, (N,): a lesion-sized blob moves it, single-pixel noise and a diffuse residual do not."""
    inner = erode(brain)
    inner = torch.where(inner.flatten(1).any(1)[:, None, None, None], inner, brain)  # a brain too small to erode
    flat = median_filter(maps, median).flatten(1).masked_fill(~inner.flatten(1), float("-inf"))
    count = (inner.flatten(1).sum(1) * top_fraction).ceil().clamp(min=1)
    # Each row's largest ``count`` by topk, a fraction of a full sort's cost, padded with zeros to
    # the row's length: the sum below runs over what the sort gave, so the scores stay bit for bit
    top = flat.topk(int(count.max()) if len(count) else 0, dim=1).values
    ordered = torch.cat([top, torch.zeros_like(flat[:, top.shape[1]:])], dim=1)
    kept = torch.arange(ordered.shape[1], device=maps.device)[None] < count[:, None]
    return torch.where(kept, ordered, torch.zeros_like(ordered)).sum(1) / count


class Detector(nn.Module, ABC):
    uses_unlabelled = False
    top_fraction = 0.02  # of the brain the default slice score reads: a ~2 cm blob in a mid-brain slice
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
        """The focal score of the map, (N,)."""
        return focal_score(maps, brain, self.top_fraction)

    def map_level(self, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Each slice's typical residual, (N,): its map's median inside the brain, which another
        scanner's noise, blur or contrast raises with the rest of the map, a lesion hardly. 1 for
        a detector that scores slices its paper's own way, not off the map (a latent distance, a
        patch metric over Z-scored maps): its scores stay as the paper defines them."""
        if type(self).slice_score is not Detector.slice_score:
            return torch.ones(len(maps), device=maps.device)
        return median_in_brain(maps, brain)

    def alternative_scores(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named (N,) slice scores to compare with ``slice_score`` (e.g. x - x' against z - z')."""
        return {"map_mean": mean_in_brain(maps, brain)}

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


RESIDUALS = ("absolute", "brighter", "darker")


def residual_map(x: torch.Tensor, reconstruction: torch.Tensor, residual: str = "absolute") -> torch.Tensor:
    """x - x_hat as a map: its size (``absolute``), or only where the scan is brighter than its
    reconstruction (``brighter``: tumour, edema and white-matter lesions on T2 and FLAIR) or
    darker (``darker``: on T1). A one-sided map leaves out the residual of the other sign, which
    on such a contrast is the reconstruction's own error (the halo beside an edge it blurs), not
    a lesion."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    difference = x - reconstruction
    if residual == "brighter":
        return difference.clamp(min=0)
    if residual == "darker":
        return (-difference).clamp(min=0)
    return difference.abs()


def lesion_removed(x: torch.Tensor, reconstruction: torch.Tensor, residual: str = "absolute") -> torch.Tensor:
    """x less what ``residual_map`` of that sign calls a lesion: where the scan is brighter than
    its reconstruction (``brighter``), or darker (``darker``), or either (``absolute``), the
    reconstruction; the scan elsewhere."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    if residual == "brighter":
        return torch.minimum(x, reconstruction)
    if residual == "darker":
        return torch.maximum(x, reconstruction)
    return reconstruction


class ReconstructionDetector(Detector):
    """A detector that reconstructs its input: one loss, one optimizer, the residual x - x_hat as
    the map (its size, or one sign of it: ``residual``)."""

    residual = "absolute"

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
        return residual_map(x, self.reconstruct(x), self.residual)

    def inspect(self, x: torch.Tensor, brain: torch.Tensor) -> Inspection:
        """With a one-sided ``residual``, only the maps keep one sign: the slice scores and their
        levels still read the whole residual, so the verdict is the absolute map's (a one-sided
        map is zero on about half the brain, and its median says little)."""
        if self.residual == "absolute":
            return super().inspect(x, brain)
        with torch.no_grad():
            reconstruction = self.reconstruct(x)
            whole = residual_map(x, reconstruction) * brain
            verdict = Inspection(whole, self.slice_score(x, whole, brain), self.alternative_scores(x, whole, brain),
                                 self.map_level(whole, brain))
            return verdict._replace(maps=residual_map(x, reconstruction, self.residual) * brain)
