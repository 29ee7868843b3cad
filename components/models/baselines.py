"""The two baselines every detector must beat, as ordinary detectors (``model.name``).

``intensity``: no training. The anomaly map is the normalised intensity itself (above the
bottom of the value range), so thresholding it at a percentile of healthy maps, as `evaluate`
does for every detector, is the intensity threshold of Meissen et al., "Challenging Current
Semi-Supervised Anomaly Segmentation Methods for Brain MRI" (2021), which beats many learned
detectors on FLAIR, where lesions are bright and CSF dark. On T2, CSF is brighter than most
lesions: it is a weak baseline there, and saying so is its job. The slice score is every
detector's default focal score with its own ``top_fraction``: the mean of the slice's brightest
``top_fraction`` of median-filtered brain pixels (a small lesion moves it; the mean would not).

``denoising_ae``: Kascenas et al., "Denoising Autoencoders for Unsupervised Anomaly Detection in
Brain MRI" (MIDL 2022). A U-Net learns to remove *coarse* noise from healthy slices: Gaussian
noise drawn on a ``noise_resolution`` x ``noise_resolution`` grid (the paper's 16 at 128 px)
with std ``noise_std`` (0.2 of the value range), upsampled bilinearly to the slice and added in
the brain; the loss is the squared error to the clean slice, in the brain. Coarse noise looks
like a lesion-sized blob, so the network learns to replace blobs by healthy tissue; the
residual |x - f(x)| is the anomaly map (its focal score the slice score), or one sign of it
(``residual``: ``brighter`` keeps x - f(x) > 0, the sign of a lesion on T2 and FLAIR). At
inference the network may restore a slice in several ``passes``: trained on blobs of one
strength, one pass restores part of a lesion brighter or larger than its noise; the next pass
restores the input with what the last one took for a lesion (its residual of the map's sign)
already replaced by that restoration, so the rest of the lesion reads as noise it removes, while
healthy tissue is restored from the scan itself again, not from the network's own blurred output
(`benchmarks/pixel_median.py --passes`). The paper
reports Dice ~0.57 and pixel AUPRC ~0.43 on BraTS T2 trained on other scanners' healthy scans,
above the autoencoders and DDPMs of its time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from components.models.detector import (RESIDUALS, Detector, ReconstructionDetector, Slices, Sync, lesion_removed,
                                        no_sync)


class IntensityThreshold(Detector):
    """The normalised intensity as the anomaly map: nothing to learn."""

    trainable = False

    def __init__(self, top_fraction: float = 0.02, output_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"intensity.top_fraction must lie in (0, 1], got {top_fraction}")
        self.top_fraction = top_fraction
        # z-scored inputs have no bottom: shift by a value below any brain intensity
        self.floor = float(output_range[0]) if output_range is not None else -10.0

    def make_optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {}

    def train_step(self, batch: Slices, optimizers: dict, sync: Sync = no_sync) -> dict[str, float]:
        return {}

    def validation_losses(self, batch: Slices) -> dict[str, float]:
        return {}

    def anomaly_map(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return (x - self.floor).clamp(min=0) * brain

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.floor)  # the "normal" it compares with is the bottom of the range


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU(),
    )


class UNet(nn.Module):
    """A plain U-Net: ``levels`` poolings, widths doubling from ``base_channels``, skip connections."""

    def __init__(self, base_channels: int, levels: int) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.encoder = nn.ModuleList(_block(a, b) for a, b in zip([1, *widths[:-2]], widths[:-1]))
        self.bottom = _block(widths[-2], widths[-1])
        self.decoder = nn.ModuleList(_block(a + b, b) for a, b in zip(reversed(widths[1:]), reversed(widths[:-1])))
        self.out = nn.Conv2d(base_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.out(x)


class CoarseNoiseDAE(ReconstructionDetector):
    """A U-Net trained to remove coarse noise from healthy slices; the residual is the map."""

    def __init__(self, base_channels: int = 32, levels: int = 4, noise_resolution: int = 8, noise_std: float = 0.2,
                 image_size: int = 64, output_range: tuple[float, float] | None = (0.0, 1.0),
                 residual: str = "absolute", passes: int = 1) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"denoising_ae.residual must be one of {RESIDUALS} (auto: as data.modality says), got {residual!r}")
        if image_size % 2**levels:
            raise ValueError(f"denoising_ae: image_size {image_size} is not divisible by 2**levels = {2**levels}")
        if not 1 <= noise_resolution <= image_size:
            raise ValueError(f"denoising_ae.noise_resolution must lie in [1, image_size={image_size}], got {noise_resolution}")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"denoising_ae.passes must be a whole number >= 1, got {passes!r}")
        self.unet = UNet(base_channels, levels)
        self.noise_resolution, self.image_size = noise_resolution, image_size
        self.residual, self.passes = residual, passes
        # noise_std is a fraction of the value range (z-scores: of one standard deviation x 4)
        self.noise_scale = noise_std * ((output_range[1] - output_range[0]) if output_range is not None else 4.0)

    def coarse_noise(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.randn(x.shape[0], 1, self.noise_resolution, self.noise_resolution, device=x.device, dtype=x.dtype)
        return F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False) * self.noise_scale

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The slice restored in ``passes`` passes, each of the scan less the last one's lesion."""
        restored = self.unet(x)
        for _ in range(self.passes - 1):
            restored = self.unet(lesion_removed(x, restored, self.residual))
        return restored

    def loss(self, batch: Slices) -> tuple[torch.Tensor, dict[str, float]]:
        x, brain = batch.image, batch.brain
        noisy = x + self.coarse_noise(x) * brain
        error = (self.unet(noisy) - x).pow(2) * brain  # training teaches one pass
        loss = error.sum() / brain.sum().clamp(min=1)
        return loss, {"loss": float(loss.detach())}
