"""Deterministic train/val/test assignment by subject, so no subject's slices leak across splits."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def assign_splits(subject_ids: list[str], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Map each subject to 'train', 'val' or 'test' in the given ratios (shuffled by ``seed``).

    Every split gets at least one subject when there are at least three, so evaluation never
    runs on an empty set.
    """
    if set(ratios) != set(SPLITS) or any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise ValueError(f"split ratios need non-negative train, val and test entries, got {ratios}")
    ids = sorted(subject_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    total = sum(ratios.values())
    n_val = round(len(ids) * ratios["val"] / total)
    n_test = round(len(ids) * ratios["test"] / total)
    if len(ids) >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    names = ["val"] * n_val + ["test"] * n_test
    names += ["train"] * (len(ids) - len(names))
    return {ids[i]: split for i, split in zip(order, names)}
