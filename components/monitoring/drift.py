"""Score drift: how far the anomaly scores a deployed detector now sees have moved from the
scores it gave its healthy validation slices (the reference registered with the model).

A new scanner, protocol or population shows up first as a shifted score distribution. Four
window statistics say how far it moved, and a sequential test says when:

- PSI (population stability index) over the reference's deciles: < 0.1 stable, 0.1-0.25
  moderate, > 0.25 a major shift (the usual credit-scoring reading). PSI has sampling noise of
  its own, about (bins - 1)(1/n_reference + 1/n_window) between two samples of one
  distribution, so a reference of fewer than 200 scores gets fewer bins (20 scores each at
  least): ten bins of a 77-score reference would read 0.16 on healthy scans by chance alone.
- The two-sample Kolmogorov-Smirnov statistic (largest gap between the two CDFs, 0-1).
- The 1-Wasserstein distance, in score units (how far, not only whether).
- The fraction of window scores above the decision threshold vs the reference's fraction.
- A two-sided CUSUM on scans: each scan is one observation, the mean of its slice scores
  standardised by the reference's mean and standard deviation. Slices of one scan rise and
  fall together, so a CUSUM over slices counts one odd scan many times over; the mean of a
  scan's standardised scores has a standard deviation of at most 1 however its slices
  correlate, which is what the CUSUM's slack ``cusum_k`` and alarm level ``cusum_h`` assume.
  It raises an event when scans have moved by more than ``cusum_k`` for long enough, then
  starts afresh, so events can be counted (benchmarks/drift_events.py measures how often on
  healthy traffic, and how soon after a shift).

A window that has seen no scan for ``stale_after_s`` is emptied (``expire``): its statistics
describe traffic that has stopped, and an alert on them must be able to resolve.

Scores are slice scores (floats, any scale); everything here is plain numpy/scipy.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_FLOOR = 1e-4  # a bin that is empty on one side would make PSI infinite
PSI_MIN_PER_BIN = 20  # reference scores per quantile bin: keeps PSI's own noise under 0.1 (stable)


@dataclass(frozen=True)
class DriftSettings:
    """Score drift (``serve.drift`` in params.yaml): the ``window`` latest slice scores,
    statistics once ``min_scores`` arrived; the per-scan CUSUM's slack ``cusum_k`` and alarm
    level ``cusum_h`` in reference standard deviations; a window with no scan for
    ``stale_after_s`` seconds is emptied."""

    window: int = 500
    min_scores: int = 100
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    stale_after_s: float = 900.0

    def __post_init__(self) -> None:
        if self.window < 10 or self.min_scores < 1:
            raise ValueError(f"serve.drift needs window >= 10 and min_scores >= 1, got {self.window} and {self.min_scores}")
        if self.min_scores > self.window:
            raise ValueError(f"serve.drift.min_scores ({self.min_scores}) is above window ({self.window})")
        if self.cusum_k < 0 or self.cusum_h <= 0:
            raise ValueError(f"serve.drift needs cusum_k >= 0 and cusum_h > 0, got {self.cusum_k} and {self.cusum_h}")
        if self.stale_after_s <= 0:
            raise ValueError(f"serve.drift.stale_after_s must be > 0, got {self.stale_after_s}")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``'s quantile bins: ``bins``
    of them, fewer for a small reference (``PSI_MIN_PER_BIN`` scores each, 2 bins at least)."""
    bins = int(np.clip(len(reference) // PSI_MIN_PER_BIN, 2, bins))
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
    """Two-sided CUSUM on standardised observations (Page, 1954); ``update`` returns the events raised."""

    def __init__(self, mean: float, std: float, k: float = 0.5, h: float = 5.0) -> None:
        if not std > 0:
            raise ValueError("a CUSUM needs a reference standard deviation > 0")
        if k < 0 or h <= 0:
            raise ValueError(f"CUSUM needs k >= 0 and h > 0, got k={k}, h={h}")
        self.mean, self.std, self.k, self.h = mean, std, k, h
        self.upper = self.lower = 0.0

    def update(self, values: np.ndarray) -> int:
        events = 0
        for z in (np.asarray(values, dtype=float) - self.mean) / self.std:
            self.upper = max(0.0, self.upper + z - self.k)
            self.lower = max(0.0, self.lower - z - self.k)
            if self.upper > self.h or self.lower > self.h:
                events += 1
                self.upper = self.lower = 0.0
        return events

    def reset(self) -> None:
        self.upper = self.lower = 0.0


class DriftMonitor:
    """A sliding window of the latest ``window`` slice scores, compared with the reference on demand.

    ``update`` takes the scores of one scan (any number of slices) and returns how many CUSUM
    events it raised; ``report`` is None until ``min_scores`` scores have arrived; ``expire``
    empties a window that has seen no scan for ``stale_after_s`` seconds.
    """

    def __init__(
        self, reference: np.ndarray, threshold: float, *, window: int = 500, min_scores: int = 100,
        cusum_k: float = 0.5, cusum_h: float = 5.0, stale_after_s: float = 900.0,
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
        self.stale_after_s, self.last_scan = stale_after_s, None

    def update(self, scores: np.ndarray, now: float | None = None) -> int:
        """One scan's slice scores; ``now``: time.monotonic() unless given."""
        scores = np.asarray(scores, dtype=float)
        scores = scores[np.isfinite(scores)]
        if not scores.size:
            return 0
        self.scores.extend(scores.tolist())
        self.last_scan = time.monotonic() if now is None else now
        return self.cusum.update([scores.mean()])

    def expire(self, now: float | None = None) -> bool:
        """Empty the window (and the CUSUM) if no scan came for ``stale_after_s``; whether it did."""
        now = time.monotonic() if now is None else now
        if self.last_scan is None or now - self.last_scan < self.stale_after_s:
            return False
        self.scores.clear()
        self.cusum.reset()
        self.last_scan = None
        return True

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
