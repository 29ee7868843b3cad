"""Thresholds with a guarantee, and rates with exact intervals.

A threshold set from n healthy calibration scores is split-conformal (Vovk et al. 2005;
Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2021): the k-th smallest
score with k = ceil((n + 1)(1 - alpha)). A new healthy score, exchangeable with the n, lies above
it with probability at most 1 - k / (n + 1) <= alpha. A percentile of the n (np.percentile)
carries no such promise: with 4 scores its 95th lies just under the largest, so a new healthy
scan lands above it more than a fifth of the time. When k > n, no score of the n is high enough for
alpha: the largest is the best there is, and guarantees 1 / (n + 1).

The guarantee is exact for units that are exchangeable: whole scans of one site. Slices and
pixels of one scan are correlated, so for them it holds on average over scans, not per slice.

Every rate reported with a count carries a Clopper-Pearson (exact binomial) interval: 0 of 4
healthy scans flagged reads [0, 0.60], not [0, 0].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class ConformalThreshold:
    threshold: float
    target_rate: float  # alpha, the false-alarm rate asked for
    guaranteed_rate: float  # 1 - rank / (n + 1): what the n scores can promise (<= target_rate when n suffices)
    rank: int  # the threshold is the rank-th smallest score
    n: int


def conformal_rank(n: int, target_rate: float) -> int:
    """ceil((n + 1)(1 - alpha)), computed so that float error cannot push an exact integer up."""
    return math.ceil(round((n + 1) * (1.0 - target_rate), 9))


def conformal_threshold(scores, target_rate: float) -> ConformalThreshold:
    """The split-conformal threshold of ``scores`` for false-alarm rate ``target_rate``; flagged means ``> threshold``."""
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"a false-alarm rate is in (0, 1), got {target_rate}")
    values = np.sort(np.asarray(scores, dtype=float).ravel())
    n = len(values)
    if n == 0:
        raise ValueError("no calibration scores to set a threshold from")
    if not np.isfinite(values).all():
        raise ValueError("calibration scores must be finite (NaN or inf found)")
    rank = min(conformal_rank(n, target_rate), n)
    return ConformalThreshold(float(values[rank - 1]), target_rate, 1.0 - rank / (n + 1), rank, n)


def scans_needed(target_rate: float) -> int:
    """The fewest calibration scores whose conformal threshold guarantees ``target_rate`` (19 for 5 %)."""
    n = 1
    while conformal_rank(n, target_rate) > n:
        n += 1
    return n


def exact_interval(flagged: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate of ``flagged`` in ``total`` (NaNs with nothing counted)."""
    if total == 0:
        return float("nan"), float("nan")
    interval = binomtest(int(flagged), int(total)).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)
