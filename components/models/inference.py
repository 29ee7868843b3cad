"""Batched inference through the detector interface: slices in, anomaly maps and slice scores out."""

from __future__ import annotations

import numpy as np
import torch

from components.models.detector import Detector


@torch.no_grad()
def score_slices(
    detector: Detector, images: np.ndarray, brain: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps (N, 1, S, S), zero outside the brain; slice scores (N,)) for preprocessed slices."""
    detector.eval()
    device = next(detector.parameters()).device
    maps, scores = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        m = torch.from_numpy(np.ascontiguousarray(brain[start : start + batch_size])).to(device)
        batch_maps = detector.anomaly_map(x) * m
        maps.append(batch_maps.float().cpu().numpy())
        scores.append(detector.slice_score(x, batch_maps, m).float().cpu().numpy())
    if not maps:
        return np.zeros_like(images), np.zeros(0, np.float32)
    return np.concatenate(maps), np.concatenate(scores)
