"""Train-time augmentation of slice batches, on whatever device the batch is on.

The papers' choices, each a parameter (0 switches it off): left/right flip and brightness
shifts (dual-vae-latent-distance-improved.txt: p = 0.5; delta 0.1 with p = 0.3), Gaussian
noise (dual-vae-latent-distance.txt: std 0.01), random scaling and rotation
(introvae-latent-search-patch-metric.txt). Intensity changes touch the brain only, so the
background keeps the value the preprocessing gave it; results are clipped to the model's range.

Example::

    spec = AugmentSpec(flip_p=0.5, noise_std=0.01)
    x = augment(x, brain, spec, background=0.0, value_range=(0.0, 1.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentSpec:
    flip_p: float = 0.5  # probability of a left/right mirror
    brightness: float = 0.1  # +- this shift of brain intensities ...
    brightness_p: float = 0.3  # ... with this probability
    noise_std: float = 0.01  # Gaussian noise in the brain
    rotation_deg: float = 0.0  # +- this in-plane rotation ...
    scale: float = 0.0  # ... and 1 +- this zoom ...
    affine_p: float = 0.0  # ... with this probability

    def __post_init__(self) -> None:
        for name in ("flip_p", "brightness_p", "affine_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "noise_std", "rotation_deg", "scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1.0:
            raise ValueError(f"train.augment.scale must be < 1 (zoom in 1 +- scale), got {self.scale}")


def _chosen(n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) bool: which samples of the batch get a transform."""
    return torch.rand(n, 1, 1, 1, device=like.device) < p  # p = 0 chooses none


def random_affine(
    x: torch.Tensor, brain: torch.Tensor, spec: AugmentSpec, background: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate and zoom the chosen samples about the slice centre (bilinear image, nearest mask)."""
    n = len(x)
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(spec.rotation_deg)
    zoom = 1 + (torch.rand(n, device=x.device) * 2 - 1) * spec.scale
    keep = ~_chosen(n, spec.affine_p, x).view(n)
    angle, zoom = angle.masked_fill(keep, 0.0), zoom.masked_fill(keep, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    moved_brain = F.grid_sample(brain.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False) > 0.5
    return moved, moved_brain


def augment(
    x: torch.Tensor,
    brain: torch.Tensor,
    spec: AugmentSpec,
    background: float = 0.0,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """A randomly augmented copy of a batch (N, 1, H, W); ``brain`` is its (N, 1, H, W) mask."""
    brain = brain.bool()
    if spec.flip_p > 0:
        flip = _chosen(len(x), spec.flip_p, x)
        x, brain = torch.where(flip, x.flip(-2), x), torch.where(flip, brain.flip(-2), brain)  # axis -2 is left-right
    if spec.affine_p > 0 and (spec.rotation_deg > 0 or spec.scale > 0):
        x, brain = random_affine(x, brain, spec, background)
    shift = torch.zeros(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
    if spec.brightness > 0:
        delta = (torch.rand_like(shift) * 2 - 1) * spec.brightness
        shift = torch.where(_chosen(len(x), spec.brightness_p, x), delta, shift)
    noise = torch.randn_like(x) * spec.noise_std if spec.noise_std > 0 else 0.0
    x = torch.where(brain, x + shift + noise, torch.full_like(x, background))
    return x.clamp(*value_range) if value_range is not None else x
