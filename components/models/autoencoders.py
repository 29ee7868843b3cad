"""The autoencoder baselines of Baur et al., "Deep Autoencoding Models for Unsupervised Anomaly
Segmentation in Brain MR Images" (2018).

One convolutional encoder/decoder (5x5 stride-2 convolutions, batch norm, leaky ReLU), four
bottlenecks:

- ``dense_ae`` / ``dense_vae``: flattened to a vector z (the paper's z = 512);
- ``spatial_ae`` / ``spatial_vae``: a 1x1 convolution to a (C, h, w) tensor, so spatial
  information survives the bottleneck (the paper's 16 x 16 x 64 at 256 px: four stride-2
  stages; ``downsamplings`` and ``latent_channels`` scale it to other resolutions).

Trained on healthy slices with L1(x, x_hat), plus kl_weight x KL(q(z|x) || N(0, I)) for the
VAEs; the anomaly map is the residual |x - x_hat|. The decoder ends in a sigmoid scaled to the
preprocessing's ``output_range`` ((0, 1) or (-1, 1)), or is linear for z-scored inputs.

Example::

    model = SpatialVAE(downsamplings=4)          # 64 x 64 input -> z of 64 x 4 x 4
    x = torch.rand(8, 1, 64, 64)
    loss, parts = model.loss(Slices(x, x > 0))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from components.models.detector import ReconstructionDetector, Slices


class AEOutput(NamedTuple):
    reconstruction: torch.Tensor  # (N, 1, H, W) in output_range
    mu: torch.Tensor  # the latent code (its mean for a VAE)
    logvar: torch.Tensor | None  # None for a plain autoencoder


def kl_per_pixel(mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the batch's latents, per input pixel."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x.numel()


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


class ConvAutoencoder(ReconstructionDetector):
    """The shared encoder/decoder; subclasses choose the bottleneck (``to_latent``/``from_latent``)."""

    variational = False

    def __init__(self, base_channels: int, downsamplings: int, kl_weight: float, output_range) -> None:
        super().__init__()
        if downsamplings < 1 or base_channels < 1 or kl_weight < 0:
            raise ValueError(f"{type(self).__name__} needs downsamplings, base_channels >= 1 and kl_weight >= 0")
        self.widths = [base_channels * 2**i for i in range(downsamplings)]
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip([1] + self.widths[:-1], self.widths)])
        ups = list(reversed(self.widths))
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(ups, ups[1:] + [base_channels])])
        self.to_image = nn.Conv2d(base_channels, 1, 5, padding=2)
        self.kl_weight = kl_weight
        self.downsamplings = downsamplings
        self.output_range = tuple(output_range) if output_range is not None else None
        self.to_latent: nn.Module
        self.from_latent: nn.Module

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        code = self.to_latent(self.encoder(x))
        if not self.variational:
            return code, None
        mu, logvar = code.chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.to_image(self.decoder(self.from_latent(z)))
        if self.output_range is None:  # z-scored inputs are unbounded
            return logits
        low, high = self.output_range
        return low + (high - low) * torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> AEOutput:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training and logvar is not None else mu
        return AEOutput(self.decode(z), mu, logvar)

    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 per pixel (+ kl_weight x KL for a VAE, the KL summed over latent elements and
        divided by the pixel count so both terms are per-pixel quantities)."""
        x = batch.image
        out = self(x)
        total = rec = F.l1_loss(out.reconstruction, x)
        parts = {"l1": rec.item()}
        if out.logvar is not None:
            kl = kl_per_pixel(out.mu, out.logvar, x)
            total = rec + self.kl_weight * kl
            parts["kl"] = kl.item()
        return total, {"loss": total.item(), **parts}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (the decoder of the posterior mean), (N, 1, H, W)."""
        return self.decode(self.encode(x)[0])


class SpatialAE(ConvAutoencoder):
    def __init__(self, base_channels: int = 32, latent_channels: int = 64, downsamplings: int = 4,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, downsamplings, 0.0, output_range)
        if latent_channels < 1:
            raise ValueError("latent_channels must be >= 1")
        factor = 2 if self.variational else 1
        self.to_latent = nn.Conv2d(self.widths[-1], factor * latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, self.widths[-1], 1), nn.LeakyReLU(0.2))


class SpatialVAE(SpatialAE):
    variational = True

    def __init__(self, base_channels: int = 32, latent_channels: int = 64, downsamplings: int = 4,
                 kl_weight: float = 0.01, output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_channels, downsamplings, output_range)
        if kl_weight < 0:
            raise ValueError("kl_weight must be >= 0")
        self.kl_weight = kl_weight


class DenseAE(ConvAutoencoder):
    """``image_size`` (the slices' side, set from the preprocessing) fixes the flattened size."""

    def __init__(self, base_channels: int = 32, latent_size: int = 512, downsamplings: int = 4, image_size: int = 64,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, downsamplings, 0.0, output_range)
        side = image_size // 2**downsamplings
        if latent_size < 1 or side < 1 or image_size % 2**downsamplings:
            raise ValueError(f"latent_size must be >= 1 and image_size ({image_size}) divisible by 2**downsamplings")
        features = self.widths[-1] * side * side
        factor = 2 if self.variational else 1
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(features, factor * latent_size))
        self.from_latent = nn.Sequential(
            nn.Linear(latent_size, features), nn.LeakyReLU(0.2), nn.Unflatten(1, (self.widths[-1], side, side))
        )


class DenseVAE(DenseAE):
    variational = True

    def __init__(self, base_channels: int = 32, latent_size: int = 512, downsamplings: int = 4, image_size: int = 64,
                 kl_weight: float = 0.01, output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_size, downsamplings, image_size, output_range)
        if kl_weight < 0:
            raise ValueError("kl_weight must be >= 0")
        self.kl_weight = kl_weight
