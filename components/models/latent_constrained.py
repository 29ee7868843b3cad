"""The latent-constrained adversarial detector of Wang, Chen, Xie and Ma, "Brain Tumor Anomaly
Detection via Latent Regularized Adversarial Network" (2020).

A DCGAN-style generator, encoder G_e -> latent vector z -> decoder G_d, reconstructs x as x';
an auxiliary encoder G_e' of the same architecture (its own weights) encodes x' to z'; a
discriminator D tells x from x'. The generator's loss (the paper's eq. 1):

    L = w_i |x - x'|_1 + w_a (-log D(x')) + w_z ||z - z'||_2 + w_r L_rank(Z)

with the norms taken per image (the L1 norm sums over pixels, so the image term dominates as
the paper's weights intend) and averaged over the batch, and where L_rank constrains the
batch's latent matrix Z (N x d) to low rank: the sum of its
singular values beyond the first ``rank`` (0: the whole nuclear norm), per slice. D is trained
alternately with -log D(x) - log(1 - D(x')). The paper's weights w_i=1, w_a=5, w_z=1, w_r=0.05
and Adam learning rate 0.002 are the defaults (its batch of 64 is train.batch_size).

The slice score is the latent reconstruction error ||z - z'||_2 (the paper's choice, its Table
5); the image residual |x - x'| is the pixel map and, as its mean in the brain, the alternative
score ``image_residual`` that the paper compares against.
"""

from __future__ import annotations

import torch
from torch import nn

from components.models.adversarial import critic_loss, discriminator, fooling_loss, split_parameters
from components.models.detector import Detector, Slices, Sync, mean_in_brain, no_sync, step


def dcgan_encoder(base_channels: int, downsamplings: int, image_size: int, latent_size: int) -> nn.Sequential:
    """Strided 4x4 convolutions (batch norm, leaky ReLU), then one convolution over the whole
    remaining map to a latent vector, (N, latent_size, 1, 1)."""
    widths = [base_channels * 2**i for i in range(downsamplings)]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip([1] + widths[:-1], widths)):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(c_out)] if i else []
        layers += [nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], latent_size, image_size // 2**downsamplings, bias=False))


def dcgan_decoder(base_channels: int, downsamplings: int, image_size: int, latent_size: int) -> nn.Sequential:
    """The encoder mirrored with transposed convolutions (batch norm, ReLU), to one channel of logits."""
    widths = [base_channels * 2**i for i in reversed(range(downsamplings))]
    side = image_size // 2**downsamplings
    layers: list[nn.Module] = [nn.ConvTranspose2d(latent_size, widths[0], side, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.ConvTranspose2d(widths[-1], 1, 4, stride=2, padding=1))


def low_rank_penalty(z: torch.Tensor, rank: int) -> torch.Tensor:
    """Sum of the singular values of the batch latent matrix beyond the first ``rank``, per slice."""
    singular = torch.linalg.svdvals(z.flatten(1))
    return singular[rank:].sum() / len(z)


class LatentConstrainedDetector(Detector):
    def __init__(self, base_channels: int = 64, latent_size: int = 100, downsamplings: int = 4, image_size: int = 64,
                 reconstruction_weight: float = 1.0, adversarial_weight: float = 5.0, latent_weight: float = 1.0,
                 rank_weight: float = 0.05, rank: int = 0, learning_rate: float | None = 0.002,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        weights = (reconstruction_weight, adversarial_weight, latent_weight, rank_weight)
        if min(weights) < 0 or rank < 0 or downsamplings < 1 or image_size % 2**downsamplings:
            raise ValueError("the loss weights and rank must be >= 0, and image_size divisible by 2**downsamplings")
        if learning_rate is not None and learning_rate <= 0:
            raise ValueError("learning_rate must be > 0 (or null for train.learning_rate)")
        shape = (base_channels, downsamplings, image_size, latent_size)
        self.encoder, self.decoder = dcgan_encoder(*shape), dcgan_decoder(*shape)
        self.auxiliary_encoder = dcgan_encoder(*shape)
        self.discriminator = discriminator(base_channels, downsamplings)
        self.w_i, self.w_a, self.w_z, self.w_r = weights
        self.rank, self.learning_rate, self.output_range = rank, learning_rate, output_range

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)
        if self.output_range is None:
            return logits
        low, high = self.output_range  # the paper's tanh, scaled to the data's range
        return low + (high - low) * (torch.tanh(logits) + 1) / 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, x', z')."""
        z = self.encoder(x)
        reconstruction = self.decode(z)
        return z, reconstruction, self.auxiliary_encoder(reconstruction)

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        rate = self.learning_rate or learning_rate
        generator = split_parameters(self, self.discriminator)
        return {"generator": torch.optim.Adam(generator, lr=rate, betas=(0.5, 0.999)),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=rate, betas=(0.5, 0.999))}

    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        z, reconstruction, z_prime = self(x)
        parts = {
            "l1": (x - reconstruction).abs().flatten(1).sum(1).mean(),  # ||x - x'||_1 of eq. 2: a norm per image
            "adversarial": fooling_loss(self.discriminator(reconstruction)),
            "latent": (z - z_prime).flatten(1).norm(dim=1).mean(),
            "rank": low_rank_penalty(z, self.rank),
        }
        loss = self.w_i * parts["l1"] + self.w_a * parts["adversarial"] + self.w_z * parts["latent"] + self.w_r * parts["rank"]
        return loss, reconstruction, {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        x = batch.image
        loss, reconstruction, parts = self.generator_loss(x)
        step(optimizers["generator"], loss, split_parameters(self, self.discriminator), sync)
        critic = critic_loss(self.discriminator(x), self.discriminator(reconstruction.detach()))
        step(optimizers["discriminator"], critic, list(self.discriminator.parameters()), sync)
        return parts | {"discriminator": critic.item()}

    @torch.no_grad()
    def validation_losses(self, batch: Slices) -> dict[str, float]:
        return self.generator_loss(batch.image)[2]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[1]

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return (x - self.reconstruct(x)).abs()

    @torch.no_grad()
    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """||z - z'||_2, (N,)."""
        z, _, z_prime = self(x)
        return (z - z_prime).flatten(1).norm(dim=1)

    @torch.no_grad()
    def alternative_scores(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_residual": mean_in_brain(maps, brain)}
