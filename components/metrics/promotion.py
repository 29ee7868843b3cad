"""The promotion gate: does a candidate model beat the champion by more than noise?

Two kinds of noise stand between a higher number and a better model. The test split is a sample
of subjects: with a handful of them, a model that is no better often scores higher. And two
trainings of one recipe differ (benchmarks/repeat_training.py measures by how much). The gate
compares a candidate with the champion only when both were evaluated on the same data under the
same labels (the evaluation fingerprint), and then promotes when

- the gain is more than ``margins[metric]``, two standard deviations of repeated training, and
- for a metric of the slice scores (slice AUROC / AUPRC), a paired permutation test over test
  subjects finds it: under "the two models are equally good", which model scored a subject's
  slices is a coin flip, so the observed gain is compared with the gains of every swap of the
  two models' scores subject by subject (all 2^n swaps, or ``permutations`` random ones). The
  swap moves raw scores: any rescaling computed from one model's scores (ranks within each
  model, say) would change with the swap and cost the test its exactness. A candidate on another
  score scale than the champion's is therefore judged conservatively. The test holds its error rate at any split
  size; with fewer subjects than can reach it (2^n swaps give p >= 1/2^n: n >= 5 for 5 %), it
  says so and the champion stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

KEYS = ["subject", "slice", "abnormal"]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The Mann-Whitney AUROC (ties count half), as sklearn's but without its checks: the
    permutation test calls it thousands of times."""
    positives = labels.sum()
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives)))


SLICE_METRICS = {"slice_auroc": auroc, "slice_auprc": average_precision_score}


@dataclass(frozen=True)
class PromotionRule:
    """How sure the gate must be (the ``register`` section of params.yaml)."""

    confidence: float = 0.95  # one-sided: the permutation test's p-value must be at most 1 - confidence
    permutations: int = 2000  # random swaps when the subjects allow more than this many
    margins: dict[str, float] = field(default_factory=dict)  # per metric: the gain a promotion needs
    allow_data_change: bool = False  # promote over a champion evaluated on other data (on the value alone)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"register.confidence must lie in [0.5, 1), got {self.confidence}")
        if self.permutations < 100:
            raise ValueError(f"register.permutations must be >= 100, got {self.permutations}")
        negative = {metric: margin for metric, margin in self.margins.items() if margin < 0}
        if negative:
            raise ValueError(f"register.margins must be >= 0, got {negative}")

    def margin(self, metric: str) -> float:
        if metric not in self.margins:
            raise ValueError(f"register.margins has no margin for {metric}: measure one with "
                             f"benchmarks/repeat_training.py and add it")
        return self.margins[metric]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    difference: float | None = None  # candidate - champion on the primary metric
    p_value: float | None = None  # the one-sided permutation test's, where one ran


@dataclass(frozen=True)
class PermutationTest:
    difference: float  # observed candidate - champion
    p_value: float  # one-sided: the share of swaps that gain at least as much
    subjects: int
    smallest_p: float  # what this many subjects can show at best


def paired_permutation(candidate: pd.DataFrame, champion: pd.DataFrame, metric: str, permutations: int,
                       seed: int = 0) -> PermutationTest:
    """The paired permutation test of metric(candidate) > metric(champion) over test subjects.
    Both frames hold one row per rated test slice: subject, slice, abnormal, score."""
    joined = candidate.merge(champion, on=KEYS, suffixes=("", "_champion"))
    labels = joined["abnormal"].to_numpy(bool)
    score = SLICE_METRICS[metric]
    ours, theirs = joined["score"].to_numpy(float), joined["score_champion"].to_numpy(float)
    codes, subjects = pd.factorize(joined["subject"])
    exact = 2 ** len(subjects) <= permutations
    if exact:
        swaps = np.array(list(product((False, True), repeat=len(subjects))))
    else:
        swaps = np.random.default_rng(seed).integers(0, 2, (permutations, len(subjects))).astype(bool)
    observed = score(labels, ours) - score(labels, theirs)
    gains = np.array([score(labels, np.where(swap[codes], theirs, ours)) - score(labels, np.where(swap[codes], ours, theirs))
                      for swap in swaps])
    at_least = int(np.sum(gains >= observed - 1e-12))  # the identity swap is among them when exact
    p_value = at_least / len(swaps) if exact else (1 + at_least) / (1 + len(swaps))
    return PermutationTest(float(observed), float(p_value), len(subjects), 1 / 2 ** len(subjects))


def same_slices(candidate: pd.DataFrame, champion: pd.DataFrame) -> bool:
    return candidate[KEYS].sort_values(KEYS).reset_index(drop=True).equals(
        champion[KEYS].sort_values(KEYS).reset_index(drop=True))


def decide(metric: str, value: float, champion_value: float | None, same_data: bool,
           candidate_scores: pd.DataFrame | None, champion_scores: pd.DataFrame | None,
           rule: PromotionRule) -> Decision:
    """Whether the candidate (``value`` on ``metric``) takes the alias from the champion."""
    if champion_value is None:
        return Decision(True, "no champion yet")
    difference, margin = value - champion_value, rule.margin(metric)
    if not same_data:
        if not rule.allow_data_change:
            return Decision(False, "evaluated on other data or labels than the champion: not comparable "
                                   "(register.allow_data_change: true promotes on the value alone)", difference)
        return Decision(difference > margin, f"other data or labels than the champion; compared on the value alone, "
                                             f"margin {margin}", difference)
    if metric not in SLICE_METRICS or candidate_scores is None or champion_scores is None:
        won = difference > margin
        return Decision(won, f"{metric} {'beats' if won else 'does not beat'} the champion's by more than the "
                             f"margin {margin} (no slice scores to test)", difference)
    if not same_slices(candidate_scores, champion_scores):
        return Decision(False, "the test slices or their labels differ from the champion's: not comparable", difference)
    test = paired_permutation(candidate_scores, champion_scores, metric, rule.permutations, rule.seed)
    alpha = 1 - rule.confidence
    if test.smallest_p > alpha:
        return Decision(False, f"not enough evidence: {test.subjects} test subjects allow p >= {test.smallest_p:.3f}, "
                               f"never {alpha:.2f}; the champion stays (a larger test split can decide)", difference)
    significant, wide = test.p_value <= alpha, difference > margin
    said = (f"paired permutation test over {test.subjects} test subjects: p = {test.p_value:.3f} "
            f"({'at most' if significant else 'above'} {alpha:.2f}); the gain {difference:+.4f} is "
            f"{'above' if wide else 'within'} the margin {margin}")
    return Decision(significant and wide, said, difference, test.p_value)
