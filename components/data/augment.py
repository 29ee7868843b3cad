"""Train-time augmentation of slice batches, on whatever device the batch is on.

The papers' choices, each a parameter (0 switches it off): left/right flip and brightness
shifts (dual-vae-latent-distance-improved.txt: p = 0.5; delta 0.1 with p = 0.3), Gaussian
noise (dual-vae-latent-distance.txt: std 0.01), random scaling and rotation
(introvae-latent-search-patch-metric.txt). Beyond the papers, an acquisition's own marks, so a
model meets another scanner's slices having seen their like (off, here and in params.yaml: paired
trainings found no gain at unseen sites, docs/preprocessing.md): a smooth
multiplicative bias field, which the default preprocessing does not correct, and an in-plane
Gaussian blur, the partial volume of a coarser or thicker-sliced acquisition. Intensity changes
touch the brain only, so the background keeps the value the preprocessing gave it; results are
clipped to the model's range.

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
    bias_field: float = 0.0  # peak-to-peak (log units) of a smooth multiplicative field, up to this ...
    blur_px: float = 0.0  # ... and an in-plane Gaussian blur of sigma up to this many pixels ...
    acquisition_p: float = 0.0  # ... each with this probability

    def __post_init__(self) -> None:
        for name in ("flip_p", "brightness_p", "affine_p", "acquisition_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "noise_std", "rotation_deg", "scale", "bias_field", "blur_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1.0:
            raise ValueError(f"train.augment.scale must be < 1 (zoom in 1 +- scale), got {self.scale}")
        if self.blur_px > MAX_BLUR_PX:
            raise ValueError(f"train.augment.blur_px must be <= {MAX_BLUR_PX} (a sigma in pixels), got {self.blur_px}")


MAX_BLUR_PX = 4.0  # a wider blur erases a slice's anatomy: nothing a scanner does to it
BIAS_GRID = 4  # the bias field's control points across a slice: smooth over a quarter of it


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


def bias_field(x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) smooth multiplicative fields, each with peak-to-peak ``strength`` (N,) in log
    units: random values on a coarse grid, upsampled bicubically, centred on 1 (log 0)."""
    grid = torch.rand(len(x), 1, BIAS_GRID, BIAS_GRID, device=x.device, dtype=x.dtype)
    log_field = F.interpolate(grid, size=x.shape[-2:], mode="bicubic", align_corners=True)
    low, high = log_field.amin((1, 2, 3), keepdim=True), log_field.amax((1, 2, 3), keepdim=True)
    log_field = (log_field - (low + high) / 2) / (high - low).clamp(min=1e-6)  # peak to peak 1, centred
    return torch.exp(log_field * strength.view(-1, 1, 1, 1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each sample (N, 1, H, W) blurred in-plane with its own sigma (N,) in pixels (0: unchanged),
    separably, the edges reflected."""
    n, _, h, w = x.shape
    radius = min(max(1, math.ceil(3 * float(sigma.max()))), h - 1, w - 1)  # reflection needs a wider slice
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-offsets**2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)  # (N, K); a sigma near 0 leaves the centre tap alone
    padded = F.pad(x.view(1, n, h, w), (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernels.view(n, 1, -1, 1), groups=n)
    return F.conv2d(rows, kernels.view(n, 1, 1, -1), groups=n).view(n, 1, h, w)


def acquisition(x: torch.Tensor, brain: torch.Tensor, spec: AugmentSpec, background: float) -> torch.Tensor:
    """The chosen samples as another acquisition might give them: blurred, then under a bias field."""
    n = len(x)
    if spec.blur_px > 0:
        sigma = torch.rand(n, device=x.device, dtype=x.dtype) * spec.blur_px
        sigma = sigma.masked_fill(~_chosen(n, spec.acquisition_p, x).view(n), 0.0)
        x = gaussian_blur(torch.where(brain, x, torch.full_like(x, background)), sigma)
    if spec.bias_field > 0:
        strength = torch.rand(n, device=x.device, dtype=x.dtype) * spec.bias_field
        strength = strength.masked_fill(~_chosen(n, spec.acquisition_p, x).view(n), 0.0)
        x = background + (x - background) * bias_field(x, strength)
    return x


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
    if spec.acquisition_p > 0 and (spec.bias_field > 0 or spec.blur_px > 0):
        x = acquisition(x, brain, spec, background)
    shift = torch.zeros(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
    if spec.brightness > 0:
        delta = (torch.rand_like(shift) * 2 - 1) * spec.brightness
        shift = torch.where(_chosen(len(x), spec.brightness_p, x), delta, shift)
    noise = torch.randn_like(x) * spec.noise_std if spec.noise_std > 0 else 0.0
    x = torch.where(brain, x + shift + noise, torch.full_like(x, background))
    return x.clamp(*value_range) if value_range is not None else x
