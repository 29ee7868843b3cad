"""One label: the sweep's per-epoch val AUROC labels slices exactly as `evaluate` does (tumour
beyond evaluate.min_tumour_pixels before resizing; other-lesion slices left out)."""

import numpy as np
import pytest

from components.data.slice_store import load_slices, read_index
from components.metrics.detection import slice_truth
from pipelines.slice_datasets import decode_shards, shard_truth


@pytest.mark.parametrize("min_tumour_pixels", [0, 20, 50])
def test_the_sweep_labels_slices_as_evaluate_does(processed_project, min_tumour_pixels):
    root = processed_project / "data" / "processed"
    index = read_index(root)
    rows = index[(index["cohort"] == "tumour") & (index["split"] == "val")]
    shards = sorted(rows["shard"].unique())
    # What Ray Data hands decode_shards: the shards' names in the index and their files' bytes.
    batch = {"path": shards, "bytes": [(root / s).read_bytes() for s in shards]}
    decoded = decode_shards(batch, shard_truth(rows, min_tumour_pixels))

    ordered = rows.set_index("shard").loc[shards].reset_index().sort_values(["shard", "row"], kind="stable")
    labels, rated = slice_truth(ordered["tumour_pixels"], ordered["lesion_pixels"], min_tumour_pixels)
    np.testing.assert_array_equal(decoded["abnormal"], labels)
    np.testing.assert_array_equal(decoded["rated"], rated)
    np.testing.assert_array_equal(decoded["image"], load_slices(root, ordered)["images"])
    assert labels.any() and not labels.all(), "the split must hold both classes, or the test proves little"


def test_a_resized_speck_of_tumour_is_not_abnormal(processed_project):
    """The old sweep label (any tumour pixel left after resizing) calls these slices abnormal."""
    root = processed_project / "data" / "processed"
    index = read_index(root)
    rows = index[index["cohort"] == "tumour"]
    tumour = load_slices(root, rows)["tumour"].reshape(len(rows), -1).any(axis=1)
    labels, _ = slice_truth(rows["tumour_pixels"], rows["lesion_pixels"], 20)
    specks = tumour & ~labels
    assert specks.any(), "no slice with a little tumour in this data: the test proves nothing"
    assert (rows["tumour_pixels"].to_numpy()[specks] <= 20).all()


def test_other_lesion_slices_are_left_out():
    labels, rated = slice_truth(np.array([0, 0, 30, 30]), np.array([0, 5, 0, 5]), 20)
    np.testing.assert_array_equal(labels, [False, False, True, True])
    np.testing.assert_array_equal(rated, [True, False, True, True])
