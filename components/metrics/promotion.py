"""The promotion gate: does a candidate model beat the champion by more than noise?

Two trainings of the same settings move slice AUROC by about 0.02 on the default test split
(README "Comparing detectors"), so "higher" alone promotes noise. The gate compares a
candidate with the champion only when both were evaluated on the same data, and then:

- for a metric of the slice scores (slice AUROC / AUPRC), with a paired bootstrap: the test
  subjects are resampled with replacement (tumour and healthy subjects apart, so every draw
  holds both classes), both models are scored on the same draw, and the candidate wins when
  the ``1 - confidence`` quantile of the difference is above zero;
- for any other metric (pixel-wise, Dice), by more than ``min_gain``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from components.metrics.operating_point import resampled_subjects

SLICE_METRICS = {"slice_auroc": roc_auc_score, "slice_auprc": average_precision_score}


@dataclass(frozen=True)
class PromotionRule:
    """How sure the gate must be (the ``register`` section of params.yaml)."""

    confidence: float = 0.95  # one-sided, of the paired bootstrap's difference
    bootstrap_samples: int = 2000
    min_gain: float = 0.02  # metrics without a bootstrap: the measured run-to-run noise of slice AUROC
    allow_data_change: bool = False  # promote over a champion evaluated on other data (on the value alone)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"register.confidence must lie in [0.5, 1), got {self.confidence}")
        if self.bootstrap_samples < 100 or self.min_gain < 0:
            raise ValueError("register.bootstrap_samples must be >= 100 and min_gain >= 0")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    difference: float | None = None  # candidate - champion on the primary metric
    interval: tuple[float, float] | None = None  # the bootstrap's central ``confidence`` interval of it


def paired_bootstrap(candidate: pd.DataFrame, champion: pd.DataFrame, metric: str, samples: int,
                     seed: int = 0) -> np.ndarray:
    """``samples`` bootstrap draws of metric(candidate) - metric(champion) over test subjects.
    Both frames hold one row per rated test slice: subject, slice, abnormal, score."""
    joined = candidate.merge(champion, on=["subject", "slice", "abnormal"], suffixes=("", "_champion"))
    score = SLICE_METRICS[metric]
    rows = {subject: part.index.to_numpy() for subject, part in joined.groupby("subject")}
    strata = [np.array([s for s, has in joined.groupby("subject")["abnormal"].any().items() if has == wanted])
              for wanted in (True, False)]
    labels, a, b = (joined[c].to_numpy() for c in ("abnormal", "score", "score_champion"))
    differences = np.empty(samples)
    for i, subjects in enumerate(resampled_subjects(strata, samples, seed)):
        drawn = np.concatenate([rows[s] for s in subjects])
        if labels[drawn].all() or not labels[drawn].any():  # a draw of one class: no AUROC
            differences[i] = np.nan
            continue
        differences[i] = score(labels[drawn], a[drawn]) - score(labels[drawn], b[drawn])
    return differences[~np.isnan(differences)]


def same_slices(candidate: pd.DataFrame, champion: pd.DataFrame) -> bool:
    keys = ["subject", "slice", "abnormal"]
    return candidate[keys].sort_values(keys).reset_index(drop=True).equals(
        champion[keys].sort_values(keys).reset_index(drop=True))


def decide(metric: str, value: float, champion_value: float | None, same_data: bool,
           candidate_scores: pd.DataFrame | None, champion_scores: pd.DataFrame | None,
           rule: PromotionRule) -> Decision:
    """Whether the candidate (``value`` on ``metric``) takes the alias from the champion."""
    if champion_value is None:
        return Decision(True, "no champion yet")
    difference = value - champion_value
    if not same_data:
        if not rule.allow_data_change:
            return Decision(False, "evaluated on other data than the champion: not comparable "
                                   "(register.allow_data_change: true promotes on the value alone)", difference)
        return Decision(difference > rule.min_gain, f"other data than the champion; compared on the value alone, "
                                                    f"margin {rule.min_gain}", difference)
    paired = (metric in SLICE_METRICS and candidate_scores is not None and champion_scores is not None
              and same_slices(candidate_scores, champion_scores))
    if not paired:
        won = difference > rule.min_gain
        return Decision(won, f"{metric} {'beats' if won else 'does not beat'} the champion's by more than "
                             f"{rule.min_gain}", difference)
    draws = paired_bootstrap(candidate_scores, champion_scores, metric, rule.bootstrap_samples, rule.seed)
    tail = (1 - rule.confidence) / 2
    interval = (float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)))
    lower = float(np.quantile(draws, 1 - rule.confidence))
    won = lower > 0
    return Decision(won, f"paired bootstrap over test subjects ({len(draws)} draws): the {metric} gain is "
                         f"{'above' if won else 'not above'} zero at {rule.confidence:.0%} confidence", difference, interval)
