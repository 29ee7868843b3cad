"""AnoVAEGAN of Baur et al. (../shared/papers/anovaegan-spatial-autoencoders.txt): the spatial
VAE plus a discriminator Dis that tells real slices from reconstructions, trained alternately:

    L_VAE = l1 * |x - x_hat|_1 + l2 * KL(q(z|x) || N(0, I)) - l3 * log Dis(x_hat)
    L_Dis = -log Dis(x) - log(1 - Dis(x_hat))

The paper trains the reconstruction objective at lr 1e-3 and the adversarial one at 1e-4, so the
discriminator's learning rate is ``discriminator_lr_scale`` (0.1) x train.learning_rate. The
paper gives no values for the lambdas: l1 = 1, ``kl_weight`` 0.01 as for the spatial VAE, and
``adversarial_weight`` 0.01, which keeps the adversarial term a small share of the loss (a
larger one makes training on small data unstable). The anomaly map is the residual |x - x_hat|.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from components.models.autoencoders import SpatialVAE
from components.models.detector import Sync, no_sync


def discriminator(base_channels: int, downsamplings: int) -> nn.Sequential:
    """Strided 4x4 convolutions (no batch norm on the input layer), pooled to one logit."""
    widths = [base_channels * 2**i for i in range(downsamplings)]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip([1] + widths[:-1], widths)):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0)]
        layers += [nn.BatchNorm2d(c_out)] if i else []
        layers += [nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 1))


class AnoVAEGAN(SpatialVAE):
    def __init__(self, base_channels: int = 32, latent_channels: int = 64, downsamplings: int = 4,
                 kl_weight: float = 0.01, adversarial_weight: float = 0.01, discriminator_lr_scale: float = 0.1,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_channels, downsamplings, kl_weight, output_range)
        if adversarial_weight < 0 or discriminator_lr_scale <= 0:
            raise ValueError("adversarial_weight must be >= 0 and discriminator_lr_scale > 0")
        self.adversarial_weight = adversarial_weight
        self.discriminator_lr_scale = discriminator_lr_scale
        self.discriminator = discriminator(base_channels, downsamplings)

    def generator_parameters(self) -> list[nn.Parameter]:
        critic = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in critic]

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "model": torch.optim.Adam(self.generator_parameters(), lr=learning_rate),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate * self.discriminator_lr_scale),
        }

    def train_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        out = self(x)
        # Discriminator: real slices are 1, reconstructions 0.
        real, fake = self.discriminator(x), self.discriminator(out.reconstruction.detach())
        critic_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
        optimizers["discriminator"].zero_grad(set_to_none=True)
        critic_loss.backward()
        sync(self.discriminator.parameters())
        optimizers["discriminator"].step()
        # VAE: reconstruct, stay near the prior, and fool the discriminator (-log Dis(x_hat)).
        rec = F.l1_loss(out.reconstruction, x)
        kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp()) / x.numel()
        judged = self.discriminator(out.reconstruction)
        adversarial = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        loss = rec + self.kl_weight * kl + self.adversarial_weight * adversarial
        optimizers["model"].zero_grad(set_to_none=True)
        loss.backward()
        sync(self.generator_parameters())
        optimizers["model"].step()
        return {"loss": loss.item(), "l1": rec.item(), "kl": kl.item(), "adversarial": adversarial.item(),
                "discriminator": critic_loss.item()}
