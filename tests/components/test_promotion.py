"""The promotion gate's test, on simulated pairs of models laid out as a small test split."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.gate_error import BETTER_SHIFT, model_pair, promotion_rate
from components.metrics.promotion import PromotionRule, auroc, decide, paired_permutation

# As the default data's test split: 10 tumour subjects (two without an abnormal slice) and 4 healthy ones.
SLICES = ([(f"brats/T{i}", 53, abnormal) for i, abnormal in enumerate((0, 2, 8, 0, 6, 7, 4, 10, 13, 9))]
          + [(f"hcp/H{i}", 57, 0) for i in range(4)])
LAYOUT = pd.DataFrame([(subject, k, k >= count - abnormal) for subject, count, abnormal in SLICES for k in range(count)],
                      columns=["subject", "slice", "abnormal"])
# As the test split was before it was enlarged: 3 tumour subjects (one without an abnormal slice) and 4 healthy.
SMALL = LAYOUT[LAYOUT["subject"].isin(["brats/T0", "brats/T2", "brats/T8", *(f"hcp/H{i}" for i in range(4))])]
NO_MARGIN = PromotionRule(margins={"slice_auroc": 0.0}, permutations=200)


def test_the_fast_auroc_is_sklearns():
    rng = np.random.default_rng(0)
    labels, scores = rng.random(300) < 0.2, np.round(rng.normal(size=300), 1)  # with ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_two_equal_models_are_promoted_at_most_at_the_tests_error_rate():
    """Every term of the two models' scores drawn alike: a promotion is a false one. On this small
    split the paired bootstrap this gate replaced promoted about 15 % of these pairs."""
    found = promotion_rate(SMALL, NO_MARGIN, pairs=200, candidate_shift=1.5, seed=3)
    assert found["rate"] <= 0.075, found


def test_a_clearly_better_model_is_promoted_and_the_p_value_is_recorded():
    candidate, champion = model_pair(LAYOUT, np.random.default_rng(0), candidate_shift=4.0)
    labels = LAYOUT["abnormal"].to_numpy(bool)
    values = [auroc(labels, frame["score"].to_numpy()) for frame in (candidate, champion)]
    decision = decide("slice_auroc", *values, True, candidate, champion, NO_MARGIN)
    assert decision.promote and decision.p_value <= 0.05 and "permutation" in decision.reason
    assert promotion_rate(LAYOUT, NO_MARGIN, pairs=40, candidate_shift=BETTER_SHIFT + 1.0, seed=4)["rate"] > 0.5


def test_the_exact_test_enumerates_every_swap_and_its_p_value_counts_them():
    """Two subjects: four swaps. The candidate ranks both perfectly, the champion neither."""
    frame = pd.DataFrame({"subject": ["a"] * 4 + ["b"] * 4, "slice": list(range(4)) * 2,
                          "abnormal": [False, False, True, True] * 2})
    good, bad = frame.assign(score=[0, 1, 2, 3, 0, 1, 2, 3.0]), frame.assign(score=[3, 2, 1, 0, 3, 2, 1, 0.0])
    test = paired_permutation(good, bad, "slice_auroc", permutations=2000)
    assert test.difference == pytest.approx(1.0) and test.subjects == 2
    assert test.p_value == pytest.approx(1 / 4) and test.smallest_p == pytest.approx(1 / 4)


def test_too_few_subjects_to_reach_the_error_rate_is_not_enough_evidence():
    frame = LAYOUT[LAYOUT["subject"].isin(["brats/T1", "brats/T2", "hcp/H0", "hcp/H1"])]  # 2^4 swaps: p >= 1/16
    candidate, champion = model_pair(frame, np.random.default_rng(0), candidate_shift=6.0)
    decision = decide("slice_auroc", 1.0, 0.5, True, candidate, champion, NO_MARGIN)
    assert not decision.promote and decision.reason.startswith("not enough evidence: 4 test subjects allow p >= 0.062")


def test_a_significant_gain_within_the_margin_is_not_promoted():
    candidate, champion = model_pair(LAYOUT, np.random.default_rng(0), candidate_shift=4.0)
    wide = PromotionRule(margins={"slice_auroc": 0.5})
    decision = decide("slice_auroc", 0.9, 0.6, True, candidate, champion, wide)
    assert not decision.promote and "within the margin 0.5" in decision.reason


def test_different_slices_or_labels_are_not_comparable_never_compared_on_values():
    candidate, champion = model_pair(LAYOUT, np.random.default_rng(0), candidate_shift=4.0)
    relabelled = champion.assign(abnormal=champion["abnormal"] | (champion["slice"] == 0))
    decision = decide("slice_auroc", 0.99, 0.5, True, candidate, relabelled, NO_MARGIN)
    assert not decision.promote and "not comparable" in decision.reason
    assert "other data or labels" in decide("slice_auroc", 0.99, 0.5, False, candidate, champion, NO_MARGIN).reason


def test_a_metric_without_a_margin_is_named():
    with pytest.raises(ValueError, match="register.margins has no margin for dice_mean"):
        decide("dice_mean", 0.6, 0.5, True, None, None, NO_MARGIN)
