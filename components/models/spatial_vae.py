"""Spatial variational autoencoder for unsupervised anomaly detection.

Baur et al., "Deep Autoencoding Models for Unsupervised Anomaly Segmentation in Brain MR
Images" (../shared/papers/anovaegan-spatial-autoencoders.txt): a fully convolutional VAE whose
latent z is a (C, h, w) tensor, so spatial information survives the bottleneck. Trained on
healthy slices with L_VAE = L1(x, x_hat) + lambda_kl * KL(q(z|x) || N(0, I)); anomalies are
the pixel-wise L1 residual |x - x_hat|. The paper's z is 16 x 16 x 64 at 256 x 256 (four
stride-2 stages); ``downsamplings`` and ``latent_channels`` scale it to other resolutions.

Example::

    model = SpatialVAE(downsamplings=4)          # 64 x 64 input -> z of 64 x 4 x 4
    out = model(torch.rand(8, 1, 64, 64))
    loss, parts = model.loss(x, out)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class VAEOutput(NamedTuple):
    reconstruction: torch.Tensor  # (N, 1, H, W) in output_range
    mu: torch.Tensor  # (N, C, h, w)
    logvar: torch.Tensor  # (N, C, h, w)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


class SpatialVAE(nn.Module):
    """Input (N, 1, H, W) float32, H and W divisible by 2**downsamplings.

    ``output_range`` is the interval the preprocessing maps intensities to ((0, 1) or (-1, 1)),
    reached through a scaled sigmoid; None (z-scored inputs) leaves the output linear.
    """

    def __init__(
        self,
        base_channels: int = 32,
        latent_channels: int = 64,
        downsamplings: int = 4,
        kl_weight: float = 0.01,
        output_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if downsamplings < 1 or base_channels < 1 or latent_channels < 1 or kl_weight < 0:
            raise ValueError("SpatialVAE needs downsamplings, base_channels, latent_channels >= 1 and kl_weight >= 0")
        widths = [base_channels * 2**i for i in range(downsamplings)]
        self.encoder = nn.Sequential(*[_down(c_in, c_out) for c_in, c_out in zip([1] + widths[:-1], widths)])
        self.to_latent = nn.Conv2d(widths[-1], 2 * latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 1), nn.LeakyReLU(0.2))
        ups = list(reversed(widths))
        self.decoder = nn.Sequential(*[_up(c_in, c_out) for c_in, c_out in zip(ups, ups[1:] + [base_channels])])
        self.to_image = nn.Conv2d(base_channels, 1, 5, padding=2)
        self.kl_weight = kl_weight
        self.downsamplings = downsamplings
        self.output_range = tuple(output_range) if output_range is not None else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.to_image(self.decoder(self.from_latent(z)))
        if self.output_range is None:  # z-scored inputs are unbounded
            return logits
        low, high = self.output_range
        return low + (high - low) * torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar)

    def loss(self, x: torch.Tensor, out: VAEOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 per pixel + kl_weight x KL, the KL summed over latent elements and divided by
        the pixel count so both terms are per-pixel quantities."""
        rec = F.l1_loss(out.reconstruction, x)
        kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp()) / x.numel()
        total = rec + self.kl_weight * kl
        return total, {"loss": total.item(), "l1": rec.item(), "kl": kl.item()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (decoder of the posterior mean), (N, 1, H, W)."""
        return self.decode(self.encode(x)[0])
