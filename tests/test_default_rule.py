"""The written rule that picks make run's detector from the cross-site comparison, by hand."""

from benchmarks.cross_site import MAX_TRAIN_SECONDS, REAL_FALSE_ALARM_RATE, REAL_SLICE_AUROC, choose_default

UNSEEN = ["a", "b"]


def real(auroc=0.9, false_alarm_low=0.0):
    return {"slice_auroc": auroc, "false_alarm_rate": false_alarm_low + 0.02, "false_alarm_rate_low": false_alarm_low}


REAL = {name: real() for name in ("old", "new", "slow", "noisy", "sharp", "ranker")}


def choose(rows, on_real=REAL):
    return choose_default(rows, UNSEEN, "old", dice_margin=0.057, real=on_real)


def row(dice, auroc=0.96, false_alarm_low=0.03, train_seconds=300.0):
    site = {"dice_mean": dice, "slice_auroc": auroc, "healthy_slice_false_alarm_rate_low": false_alarm_low}
    return {"sites": {s: dict(site) for s in UNSEEN}, "train_seconds": train_seconds}


def test_the_best_mean_dice_among_the_eligible_wins_by_more_than_the_margin():
    rows = {"old as served": row(0.30), "new": row(0.40), "slow": row(0.60, train_seconds=MAX_TRAIN_SECONDS + 1),
            "noisy": row(0.70, false_alarm_low=0.06)}
    rule = choose(rows)
    assert rule["chosen"] == "new" and set(rule["eligible"]) == {"old as served", "new"}


def test_the_default_stays_unless_beaten_by_more_than_the_margin():
    rule = choose({"old as served": row(0.30), "new": row(0.35)})
    assert rule["chosen"] == "old" and "by more than 0.057" in rule["why"]


def test_the_auroc_target_narrows_the_field_only_when_someone_meets_it():
    rows = {"old as served": row(0.30, auroc=0.90), "sharp": row(0.50, auroc=0.90), "ranker": row(0.36, auroc=0.97)}
    assert choose(rows)["chosen"] == "ranker"  # the only one at >= 0.95
    rows["ranker"]["sites"]["b"]["slice_auroc"] = 0.94  # misses at one unseen site: nobody meets it
    assert choose(rows)["chosen"] == "sharp"


def test_nobody_eligible_keeps_the_default():
    rule = choose({"new": row(0.9, false_alarm_low=0.2)})
    assert rule["chosen"] == "old" and rule["eligible"] == []


def test_a_detector_that_misses_real_gliomas_or_was_never_measured_on_them_is_not_eligible():
    rows = {"old as served": row(0.30), "new": row(0.50)}
    assert choose(rows, {**REAL, "new": real(auroc=REAL_SLICE_AUROC - 0.01)})["chosen"] == "old"
    assert choose(rows, {"old": real()})["chosen"] == "old"
    assert choose(rows)["chosen"] == "new"


def test_a_detector_that_flags_real_tumour_free_slices_beyond_the_target_is_not_eligible():
    rows = {"old as served": row(0.30), "new": row(0.50)}
    assert choose(rows, {**REAL, "new": real(false_alarm_low=REAL_FALSE_ALARM_RATE + 0.01)})["chosen"] == "old"
    assert choose(rows, {**REAL, "new": real(false_alarm_low=REAL_FALSE_ALARM_RATE)})["chosen"] == "new"
