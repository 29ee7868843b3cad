"""IntroVAE with latent representation search and a patch metric network, after Kobayashi et
al., "Learning Global and Local Features of Normal Brain Anatomy for Unsupervised Abnormality
Detection" (2020).

1. Reconstruction: a residual-block VAE (two conv-BN-LeakyReLU per block, average pooling down,
   interpolation + convolution up; widths 32-64-...-512, a 128 x h x w latent; tanh output)
   trained introspectively (IntroVAE): the encoder E pulls real slices to the prior and pushes
   reconstructions away from it up to a margin m, the decoder G makes reconstructions E
   mistakes for real ones:

       L_E = KL(z) + alpha [m - KL(z_r)]+ + beta L_AE        L_G = alpha KL(z_r) + beta L_AE

   with KL summed over latent elements and L_AE = 1/2 sum (x - x_r)^2 + ssim_weight x
   sum (1 - SSIM) per slice (the paper adds SSIM to the L2 loss). Paper values: alpha 0.5,
   beta 0.04, m 120, learning rates 1e-4 (E) and 5e-3 (G). alpha = 0 trains a plain VAE.
   Two defaults differ, both found by training on the phantoms. beta is 0.64: L_AE sums over
   pixels and KL over the same 128 x 4 x 4 latent, so at 64 px (16x fewer pixels than 256) the
   paper's 0.04 lets the KL win and the decoder outputs a constant. G's rate is 5e-4: at 5e-3
   (batches of 32, not 120) the tanh saturates in the first epoch and never recovers, even for
   a plain VAE.
2. Latent representation search at inference: z starts at E's mean and takes ``search_steps``
   (100) Adam steps (lr 1e-3) on L_AE(x, G(z)), the networks frozen; 0 switches it off.
3. Patch metric network f: residual blocks with max pooling (64-128-256-512) and an MLP (1024
   hidden) to a 256-d embedding of a ``patch_size`` patch, trained on healthy slices with the
   triplet margin loss (margin 1): positives are the anchor patch shifted by a few pixels with
   a small intensity change, negatives other crops of the same slice.

The abnormality map is || f(patch of x) - f(patch of x_r) ||_2 at each patch centre (a grid of
stride ``patch_stride``, interpolated between), Z-scored per slice inside the brain. The slice
score is the mean un-normalised distance in the brain; ``pixel_residual``, the mean |x - x_r|
the paper compares against, is an alternative score. The paper's patch of 32 px at 256 px is
``patch_size`` 16 at 64 px here (a quarter of the side, so the network keeps its four blocks).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from components.models.detector import Detector, Inspection, Slices, Sync, mean_in_brain, no_sync, step

PATCH_CHUNK = 2048  # patches embedded at a time: bounds inference memory whatever the batch


def _conv_bn(c_in: int, c_out: int, activation: nn.Module) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), activation]


class ResidualBlock(nn.Module):
    """Two conv-BN-activation layers with a skip connection (a 1x1 projection when widths differ)."""

    def __init__(self, c_in: int, c_out: int, activation: type[nn.Module] = nn.LeakyReLU) -> None:
        super().__init__()
        act = (lambda: activation(0.2)) if activation is nn.LeakyReLU else activation
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, act()), *_conv_bn(c_out, c_out, act()))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def widths(base: int, count: int, cap: int = 512) -> list[int]:
    return [min(base * 2**i, cap) for i in range(count)]


class ResidualVAE(nn.Module):
    def __init__(self, base_channels: int, downsamplings: int, latent_channels: int, output_range) -> None:
        super().__init__()
        down = widths(base_channels, downsamplings)
        self.encoder = nn.Sequential(nn.Conv2d(1, base_channels, 3, padding=1), *[
            nn.Sequential(ResidualBlock(a, b), nn.AvgPool2d(2)) for a, b in zip([base_channels] + down[:-1], down)])
        self.to_latent = nn.Conv2d(down[-1], 2 * latent_channels, 1)
        up = list(reversed(down))
        self.from_latent = nn.Conv2d(latent_channels, up[0], 1)
        self.decoder = nn.Sequential(*[
            nn.Sequential(ResidualBlock(a, b), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(b, b, 3, padding=1))
            for a, b in zip(up, up[1:] + [base_channels])])
        self.to_image = nn.Conv2d(base_channels, 1, 3, padding=1)
        self.output_range = tuple(output_range) if output_range is not None else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.to_image(self.decoder(self.from_latent(z)))
        if self.output_range is None:
            return logits
        low, high = self.output_range  # the paper's tanh, scaled to the data's range
        return low + (high - low) * (torch.tanh(logits) + 1) / 2


def kl_per_slice(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent elements, (N,)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per pixel over ``window`` x ``window`` boxes (Wang et al. 2004)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pool = lambda t: F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)  # noqa: E731
    mu_x, mu_y = pool(x), pool(y)
    var_x, var_y, cov = pool(x * x) - mu_x**2, pool(y * y) - mu_y**2, pool(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


class PatchMetricNet(nn.Module):
    """Residual blocks with max pooling, then an MLP to an embedding of one patch."""

    def __init__(self, patch_size: int, channels: list[int], hidden: int, embedding: int) -> None:
        super().__init__()
        if patch_size % 2 ** len(channels):
            raise ValueError(f"patch_size {patch_size} must be divisible by 2**{len(channels)} (one halving per block)")
        self.features = nn.Sequential(*[nn.Sequential(ResidualBlock(a, b, nn.ReLU), nn.MaxPool2d(2))
                                        for a, b in zip([1] + channels[:-1], channels)])
        side = patch_size // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, hidden), nn.ReLU(), nn.Linear(hidden, embedding))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patches))


def triplet_patches(x: torch.Tensor, size: int, shift: int, intensity: float) -> tuple[torch.Tensor, ...]:
    """(anchor, positive, negative) patches, one triplet per slice: the positive is the anchor's
    window moved by up to ``shift`` px with a small gain/offset change; the negative another crop."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")

    def crop(source, rows, cols):
        return torch.stack([source[i, :, r : r + size, c : c + size] for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])

    rows, cols = torch.randint(0, h - size + 1, (n,)), torch.randint(0, w - size + 1, (n,))
    anchor = crop(x, rows, cols)
    moved = crop(padded, rows + shift + torch.randint(-shift, shift + 1, (n,)), cols + shift + torch.randint(-shift, shift + 1, (n,)))
    gain = 1 + intensity * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1)
    offset = intensity * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1)
    negative = crop(x, torch.randint(0, h - size + 1, (n,)), torch.randint(0, w - size + 1, (n,)))
    return anchor, moved * gain + offset, negative


def patch_grid(x: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, int, int]:
    """Patches centred on the grid stride//2 + k * stride, the centres of the cells that a
    bilinear upsampling by ``stride`` assumes: ((N * rows * cols), 1, size, size), rows, cols."""
    if x.shape[-1] % stride or x.shape[-2] % stride or stride > size:
        raise ValueError(f"patch_stride {stride} must divide the slice side {x.shape[-1]} and be <= patch_size {size}")
    before = size // 2 - stride // 2
    after = size - stride - before
    padded = F.pad(x, (before, after, before, after), mode="replicate")
    patches = padded.unfold(2, size, stride).unfold(3, size, stride)  # (N, 1, rows, cols, size, size)
    rows, cols = patches.shape[2], patches.shape[3]
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, size, size), rows, cols


def zscore_in_brain(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Each map standardised by the mean and std of its brain pixels."""
    area = brain.flatten(1).sum(1).clamp(min=2).view(-1, 1, 1, 1)
    mean = (maps * brain).flatten(1).sum(1).view(-1, 1, 1, 1) / area
    var = ((maps - mean).pow(2) * brain).flatten(1).sum(1).view(-1, 1, 1, 1) / (area - 1)
    return (maps - mean) / var.sqrt().clamp(min=1e-6)


class IntroVAEPatchMetric(Detector):
    def __init__(self, base_channels: int = 32, downsamplings: int = 4, latent_channels: int = 128,
                 alpha: float = 0.5, beta: float = 0.64, margin: float = 120.0, ssim_weight: float = 1.0,
                 encoder_lr: float = 1e-4, decoder_lr: float = 5e-4,
                 search_steps: int = 100, search_lr: float = 1e-3,
                 patch_size: int = 16, patch_channels: tuple[int, ...] = (64, 128, 256, 512), patch_hidden: int = 1024,
                 patch_embedding: int = 256, patch_stride: int = 4, patch_shift: int = 2, patch_intensity: float = 0.05,
                 zscore_maps: bool = True, output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        if min(alpha, beta, margin, ssim_weight, search_steps) < 0 or min(encoder_lr, decoder_lr, search_lr) <= 0:
            raise ValueError("alpha, beta, margin, ssim_weight and search_steps must be >= 0 and the learning rates > 0")
        if patch_stride < 1 or patch_shift < 0:
            raise ValueError("patch_stride must be >= 1 and patch_shift >= 0")
        self.vae = ResidualVAE(base_channels, downsamplings, latent_channels, output_range)
        self.metric = PatchMetricNet(patch_size, list(patch_channels), patch_hidden, patch_embedding)
        self.alpha, self.beta, self.margin, self.ssim_weight = alpha, beta, margin, ssim_weight
        self.encoder_lr, self.decoder_lr, self.search_steps, self.search_lr = encoder_lr, decoder_lr, search_steps, search_lr
        self.patch_size, self.patch_stride, self.patch_shift, self.patch_intensity = patch_size, patch_stride, patch_shift, patch_intensity
        self.zscore_maps = zscore_maps
        self.data_range = output_range[1] - output_range[0] if output_range is not None else 1.0

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.vae.encoder.parameters(), *self.vae.to_latent.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.vae.from_latent.parameters(), *self.vae.decoder.parameters(), *self.vae.to_image.parameters()]

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        """The paper's encoder and decoder rates; the patch network at train.learning_rate."""
        return {"encoder": torch.optim.Adam(self.encoder_parameters(), lr=self.encoder_lr),
                "decoder": torch.optim.Adam(self.decoder_parameters(), lr=self.decoder_lr),
                "metric": torch.optim.Adam(self.metric.parameters(), lr=learning_rate)}

    def reconstruction_loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """L_AE per slice, (N,): half the summed squared error plus ssim_weight x summed (1 - SSIM)."""
        squared = 0.5 * (x - reconstruction).pow(2).flatten(1).sum(1)
        if not self.ssim_weight:
            return squared
        return squared + self.ssim_weight * (1 - ssim_map(x, reconstruction, data_range=self.data_range)).flatten(1).sum(1)

    def introspective_losses(self, x: torch.Tensor, detach: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(encoder loss, decoder loss, parts); ``detach`` for the encoder's step, where the
        reconstruction is a fixed sample."""
        mu, logvar = self.vae.encode(x)
        reconstruction = self.vae.decode(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
        ae = self.reconstruction_loss(x, reconstruction).mean()
        kl_real = kl_per_slice(mu, logvar).mean()
        mu_r, logvar_r = self.vae.encode(reconstruction.detach() if detach else reconstruction)
        kl_fake = kl_per_slice(mu_r, logvar_r).mean()
        encoder_loss = kl_real + self.alpha * F.relu(self.margin - kl_fake) + self.beta * ae
        decoder_loss = self.alpha * kl_fake + self.beta * ae
        return encoder_loss, decoder_loss, {"ae": ae.item(), "kl": kl_real.item(), "kl_reconstruction": kl_fake.item()}

    def metric_loss(self, x: torch.Tensor) -> torch.Tensor:
        anchor, positive, negative = triplet_patches(x, self.patch_size, self.patch_shift, self.patch_intensity)
        return F.triplet_margin_loss(self.metric(anchor), self.metric(positive), self.metric(negative), margin=1.0)

    def train_step(
        self, batch: Slices, optimizers: dict[str, torch.optim.Optimizer], sync: Sync = no_sync
    ) -> dict[str, float]:
        x = batch.image
        encoder_loss, _, parts = self.introspective_losses(x, detach=True)
        step(optimizers["encoder"], encoder_loss, self.encoder_parameters(), sync)
        _, decoder_loss, _ = self.introspective_losses(x, detach=False)
        step(optimizers["decoder"], decoder_loss, self.decoder_parameters(), sync)
        triplet = self.metric_loss(x)
        step(optimizers["metric"], triplet, list(self.metric.parameters()), sync)
        return {"loss": encoder_loss.item(), "decoder": decoder_loss.item(), "triplet": triplet.item(), **parts}

    @torch.no_grad()
    def validation_losses(self, batch: Slices) -> dict[str, float]:
        encoder_loss, decoder_loss, parts = self.introspective_losses(batch.image, detach=True)
        return {"loss": encoder_loss.item(), "decoder": decoder_loss.item(), "triplet": self.metric_loss(batch.image).item(), **parts}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(z*): z starts at E's mean and, with search_steps > 0, is searched for a closer reconstruction."""
        with torch.no_grad():
            z = self.vae.encode(x)[0]
        if not self.search_steps:
            with torch.no_grad():
                return self.vae.decode(z)
        z = z.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.search_lr)
        with torch.enable_grad():
            for _ in range(self.search_steps):
                loss = self.reconstruction_loss(x, self.vae.decode(z)).sum()
                (gradient,) = torch.autograd.grad(loss, z)  # the networks' weights stay untouched
                z.grad = gradient
                optimizer.step()
        with torch.no_grad():
            return self.vae.decode(z)

    @torch.no_grad()
    def patch_distances(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """|| f(p(x)) - f(p(x_r)) ||_2 at every pixel, (N, 1, H, W), from a grid of patch centres."""
        patches, rows, cols = patch_grid(torch.cat([x, reconstruction]), self.patch_size, self.patch_stride)
        embedded = torch.cat([self.metric(chunk) for chunk in patches.split(PATCH_CHUNK)]).view(2, len(x), rows, cols, -1)
        distances = (embedded[0] - embedded[1]).norm(dim=-1).unsqueeze(1)
        return F.interpolate(distances, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def inspect(self, x: torch.Tensor, brain: torch.Tensor) -> Inspection:
        """One reconstruction (and latent search) for the map and every score."""
        reconstruction = self.reconstruct(x)
        with torch.no_grad():
            distances = self.patch_distances(x, reconstruction)
            maps = (zscore_in_brain(distances, brain) if self.zscore_maps else distances) * brain
            residual = mean_in_brain((x - reconstruction).abs(), brain)
            return Inspection(maps, mean_in_brain(distances, brain), {"pixel_residual": residual})

    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return self.inspect(x, brain).maps

    @torch.no_grad()
    def slice_score(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """The mean patch distance in the brain (Z-scored maps average to 0 by construction)."""
        return self.inspect(x, brain).scores

    @torch.no_grad()
    def alternative_scores(self, x: torch.Tensor, maps: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inspect(x, brain).alternatives
