"""Batched inference: slices in, anomaly maps and slice scores out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.scoring.residual import residual_map, slice_scores


@torch.no_grad()
def anomaly_maps(detector: nn.Module, images: np.ndarray, brain: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pixel anomaly maps (N, 1, S, S) float32 for images (N, 1, S, S) in [0, 1] and brain masks."""
    detector.eval()
    device = next(detector.parameters()).device
    maps = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        m = torch.from_numpy(np.ascontiguousarray(brain[start : start + batch_size])).to(device)
        maps.append(residual_map(x, detector.reconstruct(x), m).float().cpu().numpy())
    return np.concatenate(maps) if maps else np.zeros_like(images)


def score_slices(detector: nn.Module, images: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps, per-slice scores) for a stack of preprocessed slices."""
    maps = anomaly_maps(detector, images, brain)
    return maps, slice_scores(maps, brain)
