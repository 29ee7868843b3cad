"""Score drift: how far the anomaly scores a deployed detector now sees have moved from the
scores it gave its healthy validation slices (the reference registered with the model).

A new scanner, protocol or population shows up first as a shifted score distribution. Four
window statistics say how far it moved, and a sequential test says when:

- PSI (population stability index) over the reference's deciles: < 0.1 stable, 0.1-0.25
  moderate, > 0.25 a major shift (the usual credit-scoring reading).
- The two-sample Kolmogorov-Smirnov statistic (largest gap between the two CDFs, 0-1).
- The 1-Wasserstein distance, in score units (how far, not only whether).
- The fraction of window scores above the decision threshold vs the reference's fraction.
- A two-sided CUSUM on scores standardised by the reference: it accumulates evidence slice by
  slice and raises an event when the mean has moved by more than ``cusum_k`` reference standard
  deviations for long enough (``cusum_h``); it then starts afresh, so events can be counted.
  With k = 0.5 and h = 12, 5,000 independent in-distribution scores raise no event and a
  one-std shift is caught after 51 slices (tests/components/test_drift.py, seeded draws).

Scores are slice scores (floats, any scale); everything here is plain numpy/scipy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_FLOOR = 1e-4  # a bin that is empty on one side would make PSI infinite


@dataclass(frozen=True)
class DriftSettings:
    """Score drift (``serve.drift`` in params.yaml): the ``window`` latest slice scores,
    statistics once ``min_scores`` arrived; CUSUM slack ``cusum_k`` and alarm level ``cusum_h``
    in reference standard deviations."""

    window: int = 500
    min_scores: int = 100
    cusum_k: float = 0.5
    cusum_h: float = 12.0

    def __post_init__(self) -> None:
        if self.window < 10 or self.min_scores < 1:
            raise ValueError(f"serve.drift needs window >= 10 and min_scores >= 1, got {self.window} and {self.min_scores}")
        if self.min_scores > self.window:
            raise ValueError(f"serve.drift.min_scores ({self.min_scores}) is above window ({self.window})")
        if self.cusum_k < 0 or self.cusum_h <= 0:
            raise ValueError(f"serve.drift needs cusum_k >= 0 and cusum_h > 0, got {self.cusum_k} and {self.cusum_h}")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``'s quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(reference, edges)[0] / len(reference)
    observed = np.histogram(current, edges)[0] / len(current)
    expected, observed = np.maximum(expected, PSI_FLOOR), np.maximum(observed, PSI_FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    return float(stats.ks_2samp(reference, current).statistic)


def wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    return float(stats.wasserstein_distance(reference, current))


def fraction_above(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores > threshold)) if len(scores) else 0.0


@dataclass(frozen=True)
class DriftReport:
    """The window's statistics against the reference; ``window`` scores went into them."""

    window: int
    psi: float
    ks: float
    wasserstein: float
    fraction_above: float
    expected_fraction_above: float


class Cusum:
    """Two-sided CUSUM on standardised scores (Page, 1954); ``update`` returns the events raised."""

    def __init__(self, mean: float, std: float, k: float = 0.5, h: float = 12.0) -> None:
        if not std > 0:
            raise ValueError("a CUSUM needs a reference standard deviation > 0")
        if k < 0 or h <= 0:
            raise ValueError(f"CUSUM needs k >= 0 and h > 0, got k={k}, h={h}")
        self.mean, self.std, self.k, self.h = mean, std, k, h
        self.upper = self.lower = 0.0

    def update(self, scores: np.ndarray) -> int:
        events = 0
        for z in (np.asarray(scores, dtype=float) - self.mean) / self.std:
            self.upper = max(0.0, self.upper + z - self.k)
            self.lower = max(0.0, self.lower - z - self.k)
            if self.upper > self.h or self.lower > self.h:
                events += 1
                self.upper = self.lower = 0.0
        return events


class DriftMonitor:
    """A sliding window of the latest ``window`` scores, compared with the reference on demand.

    ``update`` takes the scores of one request (any number of slices) and returns how many
    CUSUM events they raised; ``report`` is None until ``min_scores`` scores have arrived.
    """

    def __init__(
        self, reference: np.ndarray, threshold: float, *, window: int = 500, min_scores: int = 100,
        cusum_k: float = 0.5, cusum_h: float = 12.0,
    ) -> None:
        reference = np.asarray(reference, dtype=float)
        if reference.size < 10 or not np.isfinite(reference).all():
            raise ValueError(f"the drift reference needs at least 10 finite scores, got {reference.size}")
        if np.ptp(reference) == 0:
            raise ValueError("the drift reference scores are all equal: there is no spread to compare with")
        if not 0 < min_scores <= window:
            raise ValueError(f"need 0 < min_scores <= window, got min_scores={min_scores}, window={window}")
        self.reference, self.threshold, self.min_scores = np.sort(reference), threshold, min_scores
        self.expected_fraction_above = fraction_above(self.reference, threshold)
        self.scores: deque[float] = deque(maxlen=window)
        self.cusum = Cusum(float(reference.mean()), float(reference.std()), cusum_k, cusum_h)

    def update(self, scores: np.ndarray) -> int:
        scores = np.asarray(scores, dtype=float)
        scores = scores[np.isfinite(scores)]
        self.scores.extend(scores.tolist())
        return self.cusum.update(scores)

    def report(self) -> DriftReport | None:
        if len(self.scores) < self.min_scores:
            return None
        current = np.fromiter(self.scores, dtype=float)
        return DriftReport(
            window=len(current),
            psi=psi(self.reference, current),
            ks=ks_statistic(self.reference, current),
            wasserstein=wasserstein(self.reference, current),
            fraction_above=fraction_above(current, self.threshold),
            expected_fraction_above=self.expected_fraction_above,
        )
