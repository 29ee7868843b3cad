"""A rectified-flow detector after REFLECT (Beizaee et al., "REFLECT: Rectified Flows for
Efficient Brain Anomaly Correction Transport", MICCAI 2025), written from the paper.

A velocity field v(x_t, t) learns to carry a corrupted healthy slice x_0 straight to the healthy
slice x_1 it came from: on the line x_t = (1 - t) x_0 + t x_1 the target is x_1 - x_0 for every
t (Liu et al. 2023, "Flow straight and fast"). A tumour is a corruption the field has learnt to
undo, so ``steps`` Euler steps from the input, x <- x + v(x, t) / steps, land on its healthy
counterpart and the residual |x - x_hat| is the anomaly map. Straight paths are why one or two
steps suffice: the per-slice cost is ``steps`` network passes, where a diffusion model needs its
whole denoising schedule.

Where it follows the paper: the abnormal-to-healthy transport by a rectified flow, trained on
synthetic anomalies made from healthy scans only, and scored by the residual after one or a few
Euler steps. Where it departs: the flow runs in pixel space, not in the latent space of a
pretrained autoencoder (none can be downloaded here), on a small time-conditioned U-Net; and the
corruption is ours, in the brain only: ``coarse`` noise drawn on a ``noise_resolution`` grid
(lesion-sized, as Kascenas et al. 2022 use it), ``blobs`` (1-3 smooth ellipses of 3-20 % of the
slice, set to a random intensity of the value range: a bright or dark lesion with a soft rim) or
``both`` (either, at random per slice, the default).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from components.models.detector import ReconstructionDetector, Slices
from components.models.diffusion import UNet

CORRUPTIONS = ("coarse", "blobs", "both")
TIME_SCALE = 1000.0  # t in [0, 1] embedded like a diffusion step in [0, 1000)


def coarse_noise(x: torch.Tensor, resolution: int, scale: float) -> torch.Tensor:
    """Gaussian noise on a resolution x resolution grid, upsampled bilinearly to the slice."""
    grid = torch.randn(x.shape[0], 1, resolution, resolution, device=x.device, dtype=x.dtype)
    return F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False) * scale


def blob_masks(n: int, size: int, device, dtype) -> torch.Tensor:
    """(n, 1, size, size) soft masks in [0, 1]: each 1-3 rotated ellipses with a soft rim."""
    axis = torch.linspace(-1, 1, size, device=device, dtype=dtype)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    masks = torch.zeros(n, 1, size, size, device=device, dtype=dtype)
    count = torch.randint(1, 4, (n,), device=device)
    for k in range(3):
        centre = (torch.rand(n, 2, device=device, dtype=dtype) - 0.5) * 1.2
        radii = 0.06 + 0.2 * torch.rand(n, 2, device=device, dtype=dtype)
        angle = torch.rand(n, device=device, dtype=dtype) * torch.pi
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
        u, v = (cos * dx + sin * dy) / radii[:, 0, None, None], (-sin * dx + cos * dy) / radii[:, 1, None, None]
        ellipse = torch.sigmoid((1 - (u**2 + v**2).sqrt()) * 8)  # ~1 inside, a rim of ~1/8 of the radius
        masks = torch.maximum(masks, (ellipse * (k < count)[:, None, None])[:, None])
    return masks


class RectifiedFlow(ReconstructionDetector):
    """A U-Net velocity field from corrupted to healthy slices; the residual after Euler steps is the map."""

    def __init__(self, base_channels: int = 16, levels: int = 4, steps: int = 2, corruption: str = "both",
                 noise_resolution: int = 8, noise_std: float = 0.2, image_size: int = 64,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        if corruption not in CORRUPTIONS:
            raise ValueError(f"rectified_flow.corruption must be one of {list(CORRUPTIONS)}, not {corruption!r}")
        if steps < 1 or levels < 1:
            raise ValueError(f"rectified_flow needs steps >= 1 and levels >= 1, got steps={steps}, levels={levels}")
        if image_size % 2**levels:
            raise ValueError(f"rectified_flow: image_size {image_size} is not divisible by 2**levels = {2**levels}")
        if not 1 <= noise_resolution <= image_size:
            raise ValueError(f"rectified_flow.noise_resolution must lie in [1, image_size={image_size}], got {noise_resolution}")
        self.velocity = UNet(base_channels, levels)
        self.steps, self.corruption, self.noise_resolution = steps, corruption, noise_resolution
        self.low, self.high = output_range if output_range is not None else (-2.0, 2.0)  # z-scores: +-2 sd
        self.noise_scale = noise_std * (self.high - self.low)

    def corrupt(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """A synthetic anomaly in each healthy slice's brain (``corruption``)."""
        coarse = x + coarse_noise(x, self.noise_resolution, self.noise_scale)
        masks = blob_masks(len(x), x.shape[-1], x.device, x.dtype)
        level = self.low + (self.high - self.low) * torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
        blobs = x * (1 - masks) + level * masks
        if self.corruption == "coarse":
            corrupted = coarse
        elif self.corruption == "blobs":
            corrupted = blobs
        else:
            corrupted = torch.where(torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5, coarse, blobs)
        return torch.where(brain, corrupted, x)

    def velocity_at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t * TIME_SCALE)

    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow matching on straight lines from the corrupted slice (t = 0) to the healthy one (t = 1)."""
        healthy = batch.image
        corrupted = self.corrupt(healthy, batch.brain)
        t = torch.rand(len(healthy), device=healthy.device, dtype=healthy.dtype)
        x_t = corrupted + t.view(-1, 1, 1, 1) * (healthy - corrupted)
        loss = (self.velocity_at(x_t, t) - (healthy - corrupted)).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``steps`` Euler steps from t = 0 to t = 1."""
        for k in range(self.steps):
            t = torch.full((len(x),), k / self.steps, device=x.device, dtype=x.dtype)
            x = x + self.velocity_at(x, t) / self.steps
        return x
