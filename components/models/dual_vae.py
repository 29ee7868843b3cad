"""The dual-VAE latent-distance detector of Albu, Enescu and Malagò, "Tumour Detection in Brain
MRIs by Computing Dissimilarities in the Latent Space of a Variational AutoEncoder" (2020), and
of its follow-up, "Improved Slice-wise Tumour Detection in Brain MRIs by Computing
Dissimilarities between Latent Representations", with the VAE baselines of the follow-up's
Table 1.

Two VAEs of one topology: VAE-H learns healthy slices, the other VAE learns unlabelled slices of
the tumour cohort (its training split; labels are never read). A slice x is reconstructed by
VAE-H, which cannot reproduce a tumour, and scored in the other VAE's latent space:

    x_h = VAE-H(x) (brain mask laid over it)       score(x) = || mu_VAE(x) - mu_VAE(x_h) ||_2

As in the follow-up, the likelihood counts brain-mask pixels only (a Gaussian one: squared error
over the brain), and its expectation takes ``latent_samples`` (3) draws per input. Each VAE is
the encoder/decoder of ``DenseVAE`` (stride-2 convolutions, a dense Gaussian latent); the paper's
widths 64-128-256-512 and latent 128 are the defaults (its 4x4 kernels are 5x5 here), and its
Adam learning rate 1e-4 is ``learning_rate``.

Baselines (the L2 input-space scores of VAEs trained on healthy slices only):

- ``input_l2``, an alternative score of the dual VAE: || x - x_h ||_2 inside the brain (VAE-H);
- ``ce_dvae``: a denoising VAE that sees each slice with a random grey square over it (40 px at
  128 px: ``mask_fraction`` 0.3125 of the side) and reconstructs it clean;
- ``vae_ce``: a VAE with a context-encoding regulariser: its usual loss plus ``context_weight`` x
  the squared error between the clean slice and the reconstruction of a masked one (20 px at 128).
"""

from __future__ import annotations

import torch

from components.models.autoencoders import DenseVAE, kl_per_pixel
from components.models.detector import Detector, ReconstructionDetector, Slices, Sync, no_sync, step


def masked_elbo(vae: DenseVAE, x: torch.Tensor, target: torch.Tensor, brain: torch.Tensor, samples: int,
                kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, squared error per brain pixel, KL per pixel) of ``vae`` encoding ``x`` and
    reconstructing ``target``, the error averaged over ``samples`` latent draws."""
    mu, logvar = vae.encode(x)
    std = torch.exp(0.5 * logvar)
    area = brain.sum().clamp(min=1)
    error = sum(((vae.decode(mu + std * torch.randn_like(std)) - target).pow(2) * brain).sum() / area for _ in range(samples))
    error = error / samples
    kl = kl_per_pixel(mu, logvar, x)
    return error + kl_weight * kl, error, kl


def overlay(reconstruction: torch.Tensor, brain: torch.Tensor, background: float) -> torch.Tensor:
    """The reconstruction inside the brain, the background outside it (the papers' black background)."""
    return torch.where(brain, reconstruction, torch.full_like(reconstruction, background))


def input_l2(x: torch.Tensor, reconstruction: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """|| x - x_hat ||_2 over the brain, (N,)."""
    return ((x - reconstruction).pow(2) * brain).flatten(1).sum(1).sqrt()


class _VAEs(Detector):
    """Hyper-parameters and pieces shared by the dual VAE and the single-VAE baselines."""

    def __init__(self, base_channels: int, latent_size: int, downsamplings: int, image_size: int, kl_weight: float,
                 latent_samples: int, learning_rate: float | None, output_range) -> None:
        super().__init__()
        if latent_samples < 1 or (learning_rate is not None and learning_rate <= 0):
            raise ValueError("latent_samples must be >= 1 and learning_rate > 0 (or null for train.learning_rate)")
        self.vae_args = dict(base_channels=base_channels, latent_size=latent_size, downsamplings=downsamplings,
                             image_size=image_size, kl_weight=kl_weight, output_range=output_range)
        self.kl_weight, self.latent_samples, self.learning_rate = kl_weight, latent_samples, learning_rate
        self.background = output_range[0] if output_range is not None else 0.0
        self.healthy = DenseVAE(**self.vae_args)  # VAE-H

    def rate(self, learning_rate: float) -> float:
        return self.learning_rate or learning_rate

    def elbo(self, vae: DenseVAE, x: torch.Tensor, target: torch.Tensor, brain: torch.Tensor):
        return masked_elbo(vae, x, target, brain, self.latent_samples, self.kl_weight)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """VAE-H's reconstruction (the healthy-looking version of x)."""
        return self.healthy.reconstruct(x)

    @torch.no_grad()
    def healthy_reconstruction(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return overlay(self.reconstruct(x), brain, self.background)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return (x - self.healthy_reconstruction(x, brain)).abs()


class DualVAE(_VAEs):
    uses_unlabelled = True

    def __init__(self, base_channels: int = 64, latent_size: int = 128, downsamplings: int = 4, image_size: int = 64,
                 kl_weight: float = 0.01, latent_samples: int = 3, learning_rate: float | None = 1e-4,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_size, downsamplings, image_size, kl_weight, latent_samples,
                         learning_rate, output_range)
        self.mixed = DenseVAE(**self.vae_args)  # VAE, on unlabelled tumour-cohort slices

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        rate = self.rate(learning_rate)
        return {"healthy": torch.optim.Adam(self.healthy.parameters(), lr=rate),
                "mixed": torch.optim.Adam(self.mixed.parameters(), lr=rate)}

    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        if batch.unlabelled is None:
            raise ValueError("the dual VAE trains on unlabelled tumour-cohort slices too: pass them as batch.unlabelled")
        loss_h, error_h, kl_h = self.elbo(self.healthy, batch.image, batch.image, batch.brain)
        step(optimizers["healthy"], loss_h, list(self.healthy.parameters()), sync)
        u = batch.unlabelled
        loss_m, error_m, kl_m = self.elbo(self.mixed, u.image, u.image, u.brain)
        step(optimizers["mixed"], loss_m, list(self.mixed.parameters()), sync)
        return {"loss": loss_h.item(), "l2": error_h.item(), "kl": kl_h.item(),
                "mixed_loss": loss_m.item(), "mixed_l2": error_m.item(), "mixed_kl": kl_m.item()}

    @torch.no_grad()
    def validation_losses(self, batch: Slices) -> dict[str, float]:
        """VAE-H's loss parts (the validation slices are healthy)."""
        loss, error, kl = self.elbo(self.healthy, batch.image, batch.image, batch.brain)
        return {"loss": loss.item(), "l2": error.item(), "kl": kl.item()}

    @torch.no_grad()
    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """|| mu_VAE(x) - mu_VAE(VAE-H(x)) ||_2: the latent distance, (N,)."""
        mu, _ = self.mixed.encode(x)
        mu_h, _ = self.mixed.encode(self.healthy_reconstruction(x, brain))
        return (mu - mu_h).norm(dim=1)

    @torch.no_grad()
    def alternative_scores(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_l2": input_l2(x, self.healthy_reconstruction(x, brain), brain)}


def grey_squares(x: torch.Tensor, brain: torch.Tensor, fraction: float, output_range) -> torch.Tensor:
    """``x`` with one randomly placed square of a random grey (side ``fraction`` of the slice) each."""
    n, _, h, w = x.shape
    side = max(1, round(fraction * h))
    low, high = output_range if output_range is not None else (float(x.min()), float(x.max()))
    rows = torch.randint(0, h - side + 1, (n, 1, 1, 1), device=x.device)
    cols = torch.randint(0, w - side + 1, (n, 1, 1, 1), device=x.device)
    r = torch.arange(h, device=x.device).view(1, 1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (r >= rows) & (r < rows + side) & (c >= cols) & (c < cols + side)
    grey = low + (high - low) * torch.rand(n, 1, 1, 1, device=x.device)
    return torch.where(inside, grey.expand_as(x), x)


class ContextVAE(_VAEs, ReconstructionDetector):
    """A healthy-trained VAE with context-encoding masks, scored by || x - x_hat ||_2 in the brain.

    ``context_weight`` 0: the denoising VAE (masked input, clean target); > 0: the regularised
    VAE (clean ELBO + context_weight x error of the masked input's reconstruction)."""

    def __init__(self, base_channels: int = 64, latent_size: int = 128, downsamplings: int = 4, image_size: int = 64,
                 kl_weight: float = 0.01, latent_samples: int = 3, learning_rate: float | None = 1e-4,
                 mask_fraction: float = 0.3125, context_weight: float = 0.0,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_size, downsamplings, image_size, kl_weight, latent_samples,
                         learning_rate, output_range)
        if not 0 < mask_fraction < 1 or context_weight < 0:
            raise ValueError("mask_fraction must lie in (0, 1) and context_weight be >= 0")
        self.mask_fraction, self.context_weight, self.output_range = mask_fraction, context_weight, output_range

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=self.rate(learning_rate))}

    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]:
        x, brain = batch.image, batch.brain
        masked = grey_squares(x, brain, self.mask_fraction, self.output_range)
        if not self.context_weight:  # denoising: masked in, clean out
            loss, error, kl = self.elbo(self.healthy, masked, x, brain)
            return loss, {"loss": loss.item(), "l2": error.item(), "kl": kl.item()}
        loss, error, kl = self.elbo(self.healthy, x, x, brain)
        context = ((self.healthy.decode(self.healthy.encode(masked)[0]) - x).pow(2) * brain).sum() / brain.sum().clamp(min=1)
        total = loss + self.context_weight * context
        return total, {"loss": total.item(), "l2": error.item(), "kl": kl.item(), "context": context.item()}

    @torch.no_grad()
    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return input_l2(x, self.healthy_reconstruction(x, brain), brain)


class CEDVAE(ContextVAE):
    """The denoising VAE with 40-px masks at 128 px."""


class VAEWithContextRegulariser(ContextVAE):
    def __init__(self, base_channels: int = 64, latent_size: int = 128, downsamplings: int = 4, image_size: int = 64,
                 kl_weight: float = 0.01, latent_samples: int = 3, learning_rate: float | None = 1e-4,
                 mask_fraction: float = 0.15625, context_weight: float = 1.0,
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, latent_size, downsamplings, image_size, kl_weight, latent_samples,
                         learning_rate, mask_fraction, context_weight, output_range)
