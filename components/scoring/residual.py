"""Residual-based anomaly maps and slice scores, as in the spatial-autoencoder paper."""

from __future__ import annotations

import numpy as np
import torch


def residual_map(images: torch.Tensor, reconstructions: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Pixel-wise anomaly map |x - x_hat| inside the brain, zero outside. All (N, 1, H, W)."""
    return (images - reconstructions).abs() * brain


def slice_scores(maps: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per-slice score = mean anomaly inside the brain; (N, 1, H, W) -> (N,)."""
    area = brain.reshape(len(brain), -1).sum(axis=1)
    return maps.reshape(len(maps), -1).sum(axis=1) / np.maximum(area, 1)


def volume_score(scores: np.ndarray) -> float:
    """A volume's score is its most anomalous slice's: one lesion is enough to flag a scan."""
    return float(np.max(scores)) if len(scores) else 0.0
