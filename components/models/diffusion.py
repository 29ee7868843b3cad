"""A patched denoising-diffusion detector, beyond the papers (in the style of pDDPM, Behrendt et
al. 2023, and AnoDDPM, Wyatt et al. 2022, which lead the recent healthy-trained BraTS results).

A small U-Net eps(x_t, t) learns to predict the noise of healthy slices under the DDPM forward
process (``timesteps`` 1000, linear betas 1e-4 to 0.02). To detect, a slice is noised only
part-way, to step ``noise_level``, so its coarse anatomy survives and a tumour is drowned;
``sampling_steps`` deterministic DDIM steps then denoise it back towards a healthy slice, and
the residual |x - x_hat| is the anomaly map. Patched: the slice is cut into a grid of square
patches (side ``patch_fraction`` of the slice; 1 noises it whole) and each is noised and
denoised in turn with the rest of the slice clean around it as context; training noises a random
patch the same way and counts the loss inside it. The noise is multi-scale by default (AnoDDPM's
point): with white Gaussian noise a large bright tumour's low frequencies survive and the model
faithfully restores it (`brainomaly compare --only diffusion` on the phantoms: slice AUROC
0.43 with white noise, 0.88 with multi-scale noise; docs/comparison.md "Comparing detectors").
Inference noise comes from a fixed seed, the same for every slice, so a slice always gets the
same map whatever batch it is in.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from components.models.detector import ReconstructionDetector, Slices


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps, (N, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeBlock(nn.Module):
    """Residual block (group norm, SiLU) with the step's embedding added in between."""

    def __init__(self, c_in: int, c_out: int, time_dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.GroupNorm(min(8, c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.time = nn.Linear(time_dim, c_out)
        self.second = nn.Sequential(nn.GroupNorm(min(8, c_out), c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.first(x) + self.time(emb)[:, :, None, None]
        return self.second(h) + self.skip(x)


class UNet(nn.Module):
    def __init__(self, base_channels: int, levels: int) -> None:
        super().__init__()
        self.time_dim = 4 * base_channels
        self.embed = nn.Sequential(nn.Linear(base_channels, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim))
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.stem = nn.Conv2d(1, base_channels, 3, padding=1)
        self.down = nn.ModuleList(TimeBlock(a, b, self.time_dim) for a, b in zip(widths, widths[1:]))
        self.middle = TimeBlock(widths[-1], widths[-1], self.time_dim)
        self.up = nn.ModuleList(TimeBlock(2 * b, a, self.time_dim) for a, b in zip(reversed(widths[:-1]), reversed(widths[1:])))
        self.out = nn.Sequential(nn.GroupNorm(min(8, base_channels), base_channels), nn.SiLU(), nn.Conv2d(base_channels, 1, 3, padding=1))
        self.base_channels = base_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """``condition``: an (N, time_dim) embedding added to the step's, as a class label would be."""
        emb = self.embed(timestep_embedding(t, self.base_channels))
        if condition is not None:
            emb = emb + condition
        h, skips = self.stem(x), []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.middle(h, emb)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def multiscale_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, persistence: float = 0.8) -> torch.Tensor:
    """Unit-variance noise with energy at every scale: white noise plus coarser grids upsampled,
    octave k weighted persistence**k (AnoDDPM's reason for simplex noise: white noise leaves a
    large bright lesion's low frequencies intact, so the model would keep it)."""
    size = shape[-1]
    noise, octave = torch.randn(shape, generator=generator), 1
    while size >> octave >= 2:
        coarse = torch.randn((*shape[:-2], size >> octave, size >> octave), generator=generator)
        noise = noise + persistence**octave * F.interpolate(coarse, size=shape[-2:], mode="bilinear", align_corners=False)
        octave += 1
    return noise / noise.flatten(1).std(1).view(-1, *[1] * (len(shape) - 1))


def patch_masks(size: int, fraction: float, device) -> list[torch.Tensor]:
    """(1, 1, size, size) boolean masks of the square patches that tile the slice."""
    side = max(1, round(fraction * size))
    starts = list(range(0, size - side + 1, side))
    if starts[-1] + side < size:
        starts.append(size - side)  # the last patch flush with the edge
    masks = []
    for r in starts:
        for c in starts:
            mask = torch.zeros(1, 1, size, size, dtype=torch.bool, device=device)
            mask[..., r : r + side, c : c + side] = True
            masks.append(mask)
    return masks


class PatchedDDPM(ReconstructionDetector):
    def __init__(self, base_channels: int = 32, levels: int = 3, timesteps: int = 1000, noise_level: int = 400,
                 sampling_steps: int = 10, patch_fraction: float = 0.5, seed: int = 0,
                 noise: str = "multiscale", output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        if not 0 < noise_level <= timesteps or sampling_steps < 1 or not 0 < patch_fraction <= 1 or levels < 1:
            raise ValueError("need 0 < noise_level <= timesteps, sampling_steps >= 1, levels >= 1 and patch_fraction in (0, 1]")
        if noise not in ("gaussian", "multiscale"):
            raise ValueError(f"noise must be 'gaussian' or 'multiscale', not {noise!r}")
        self.unet = UNet(base_channels, levels)
        betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)
        self.timesteps, self.noise_level, self.sampling_steps = timesteps, noise_level, sampling_steps
        self.patch_fraction, self.seed, self.noise = patch_fraction, seed, noise
        # Diffusion works on [-1, 1]: the data's range is mapped there and back.
        self.low, self.high = output_range if output_range is not None else (-1.0, 1.0)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * (x - self.low) / (self.high - self.low) - 1

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + (x + 1) * (self.high - self.low) / 2

    def sample_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        if self.noise == "gaussian":
            return torch.randn(shape, generator=generator)
        return multiscale_noise(shape, generator)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]:
        """Noise prediction error inside one random patch per slice, the rest left clean."""
        x0 = self.to_unit(batch.image)
        n, _, h, w = x0.shape
        t = torch.randint(0, self.timesteps, (n,), device=x0.device)
        noise = self.sample_noise(x0.shape).to(x0.device)
        masks = patch_masks(h, self.patch_fraction, x0.device)
        region = torch.cat([masks[i] for i in torch.randint(0, len(masks), (n,)).tolist()])
        x_t = torch.where(region, self.noised(x0, t, noise), x0)
        error = ((self.unet(x_t, t, self.condition(x0)) - noise).pow(2) * region).sum() / region.sum()
        return error, {"loss": error.item(), "noise_mse": error.item()}

    def condition(self, x0: torch.Tensor) -> torch.Tensor | None:
        """What guides the denoiser besides the noised slice: nothing here (see ConditionedDDPM)."""
        return None

    @torch.no_grad()
    def denoise(self, x0: torch.Tensor, region: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise ``region`` of x0 to step noise_level, then DDIM back to step 0, the rest kept clean."""
        guide = self.condition(x0)
        steps = torch.linspace(self.noise_level - 1, 0, self.sampling_steps + 1).round().long().unique_consecutive().tolist()
        noise = self.sample_noise((1, *x0.shape[1:]), generator).to(x0.device).expand_as(x0)  # same for every slice
        t0 = torch.full((len(x0),), steps[0], device=x0.device, dtype=torch.long)
        x = torch.where(region, self.noised(x0, t0, noise), x0)
        for current, following in zip(steps, steps[1:] + [-1]):
            t = torch.full((len(x0),), current, device=x0.device, dtype=torch.long)
            eps = self.unet(x, t, guide)
            a = self.alpha_bar[current]
            estimate = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            if following < 0:
                x = estimate
            else:
                a_next = self.alpha_bar[following]
                x = a_next.sqrt() * estimate + (1 - a_next).sqrt() * eps
            x = torch.where(region, x, x0)
        return x

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Each patch denoised with the rest of the slice as context, the patches stitched."""
        x0 = self.to_unit(x)
        generator = torch.Generator().manual_seed(self.seed)
        result = x0.clone()
        for mask in patch_masks(x.shape[-1], self.patch_fraction, x.device):
            result = torch.where(mask, self.denoise(x0, mask.expand_as(x0), generator), result)
        return self.from_unit(result)


class ImageEncoder(nn.Module):
    """Strided convolutions to one vector per slice: what the denoiser is told the slice looks like."""

    def __init__(self, base_channels: int, levels: int, out_dim: int) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c_out in (base_channels * 2**i for i in range(levels + 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ConditionedDDPM(PatchedDDPM):
    """The conditioned DDPM of Behrendt et al., "Guided reconstruction with conditioned diffusion
    models for unsupervised anomaly detection in brain MRIs" (2025; cDDPM). The whole slice is
    noised to ``noise_level`` and denoised in ``sampling_steps`` DDIM steps, as the patched DDPM
    does with one patch, but the denoiser is also told what the input looks like: an encoder maps
    the clean input slice to one vector, added to the step's embedding in every block. The noise
    takes the tumour away; the condition keeps the rest of this subject's anatomy, so the
    reconstruction is faithful where the slice is healthy and the residual is the tumour.
    Here the encoder is a small convolutional one, trained with the denoiser from scratch on the
    healthy slices (no pretrained weights can be downloaded here), and the schedule is cut to a
    CPU budget: a few DDIM steps from a partial noise level, as the patched DDPM's."""

    def __init__(self, base_channels: int = 32, levels: int = 3, timesteps: int = 1000, noise_level: int = 400,
                 sampling_steps: int = 10, seed: int = 0, noise: str = "multiscale",
                 output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__(base_channels, levels, timesteps, noise_level, sampling_steps, 1.0, seed, noise, output_range)
        self.encoder = ImageEncoder(base_channels, levels, self.unet.time_dim)

    def condition(self, x0: torch.Tensor) -> torch.Tensor:
        return self.encoder(x0)
