import shutil

import numpy as np
import pandas as pd
import pytest

from components.data.slice_store import read_index
from components.validation.processed_suite import GateSpec, label_table, run_gate, slice_table, subject_table

SPEC = GateSpec(size=32)


def tables(root):
    index = read_index(root)
    return {
        "slices": slice_table(root, index),
        "subjects": subject_table(index),
        "labels": label_table(pd.read_parquet(root / "volumes.parquet")),
    }


@pytest.fixture()
def processed(processed_project, tmp_path):
    """A private copy of the processed data, free to corrupt."""
    return shutil.copytree(processed_project / "data" / "processed", tmp_path / "processed")


def test_clean_data_passes(processed):
    report = run_gate(tables(processed), SPEC)
    assert report.success, report.summary()
    assert report.checked == 10


def test_nan_in_a_shard_fails_naming_the_subject(processed):
    shard = sorted((processed / "shards" / "hcp").glob("*.npz"))[0]
    arrays = dict(np.load(shard))
    arrays["images"][0, 0, 5, 5] = np.nan
    np.savez_compressed(shard, **arrays)
    report = run_gate(tables(processed), SPEC)
    assert not report.success
    failure = next(f for f in report.failures if f["column"] == "finite")
    assert failure["examples"][0]["subject"] == shard.stem
    assert shard.stem in report.summary()


def test_subject_in_two_splits_and_foreign_labels_fail(processed):
    t = tables(processed)
    t["subjects"].loc[0, "n_splits"] = 2
    t["labels"].loc[t["labels"].index[0], "label"] = 3
    t["slices"].loc[0, "max"] = 1.7
    failed = {(f["table"], str(f["column"])) for f in run_gate(t, SPEC).failures}
    assert failed == {("subjects", "n_splits"), ("labels", "label"), ("slices", "max")}


def test_wrong_size_fails(processed):
    report = run_gate(tables(processed), GateSpec(size=64))
    assert {f["column"] for f in report.failures} == {"height", "width"}
