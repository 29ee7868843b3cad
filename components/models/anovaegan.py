"""AnoVAEGAN of Baur et al., "Deep Autoencoding Models for Unsupervised Anomaly Segmentation in
Brain MR Images" (2018): the spatial VAE plus a discriminator Dis that tells real slices from
reconstructions, trained alternately:

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

from components.models.adversarial import critic_loss, discriminator, fooling_loss, split_parameters
from components.models.autoencoders import SpatialVAE, kl_per_pixel
from components.models.detector import Slices, Sync, no_sync, step


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
        return split_parameters(self, self.discriminator)

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "model": torch.optim.Adam(self.generator_parameters(), lr=learning_rate),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate * self.discriminator_lr_scale),
        }

    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        x = batch.image
        out = self(x)
        # Discriminator: real slices are 1, reconstructions 0.
        real, fake = self.discriminator(x), self.discriminator(out.reconstruction.detach())
        critic = critic_loss(real, fake)
        step(optimizers["discriminator"], critic, list(self.discriminator.parameters()), sync)
        # VAE: reconstruct, stay near the prior, and fool the discriminator (-log Dis(x_hat)).
        rec = F.l1_loss(out.reconstruction, x)
        kl = kl_per_pixel(out.mu, out.logvar, x)
        judged = self.discriminator(out.reconstruction)
        adversarial = fooling_loss(judged)
        loss = rec + self.kl_weight * kl + self.adversarial_weight * adversarial
        step(optimizers["model"], loss, self.generator_parameters(), sync)
        return {"loss": loss.item(), "l1": rec.item(), "kl": kl.item(), "adversarial": adversarial.item(),
                "discriminator": critic.item()}
