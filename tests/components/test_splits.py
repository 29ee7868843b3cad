import pytest

from components.data.splits import assign_splits

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_deterministic_and_by_ratio():
    ids = [f"s{i}" for i in range(20)]
    first, again = assign_splits(ids, RATIOS, seed=1), assign_splits(list(reversed(ids)), RATIOS, seed=1)
    assert first == again
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}


def test_every_split_gets_a_subject_when_possible():
    assert set(assign_splits(["a", "b", "c"], RATIOS, seed=0).values()) == {"train", "val", "test"}


def test_bad_ratios():
    with pytest.raises(ValueError, match="split ratios"):
        assign_splits(["a"], {"train": 1.0}, seed=0)
