"""The great-expectations gate over real tables built from tiny phantoms, clean and corrupted."""

import shutil

import numpy as np
import pandas as pd
import pytest

from components.data.layouts import read_brats, read_hcp
from components.data.nifti_io import load_volume, save_volume
from components.data.slice_store import read_index
from components.validation.gate import GateSpec, run_gate
from components.validation.tables import label_table, raw_table, slice_table, split_table, subject_table

SPEC = GateSpec(size=32)


def tables(root, subjects=()):
    index = read_index(root)
    slices = slice_table(root, index)
    return {
        "raw": raw_table(list(subjects)),
        "labels": label_table(pd.read_parquet(root / "volumes.parquet")),
        "slices": slices,
        "subjects": subject_table(slices),
        "splits": split_table(index, min_tumour_pixels=20),
    }


@pytest.fixture()
def processed(processed_project, tmp_path):
    """A private copy of the processed data, free to corrupt."""
    return shutil.copytree(processed_project / "data" / "processed", tmp_path / "processed")


@pytest.fixture()
def raw_subjects(phantom_roots, tmp_path):
    """A private copy of the raw phantoms, read back as subjects."""
    hcp, brats = (shutil.copytree(root, tmp_path / root.name) for root in phantom_roots)
    return [*read_hcp(hcp), *read_brats(brats)]


def test_clean_data_passes_and_the_markdown_report_lists_every_expectation(processed, raw_subjects):
    report = run_gate(tables(processed, raw_subjects), SPEC)
    assert report.success, report.summary()
    assert report.checked == 19
    markdown = report.to_markdown()
    assert markdown.count("| pass |") == 19 and "affine is invertible" in markdown


def test_nan_in_a_shard_fails_naming_the_subject(processed):
    shard = sorted((processed / "shards" / "hcp").glob("*.npz"))[0]
    arrays = dict(np.load(shard))
    arrays["images"][0, 0, 5, 5] = np.nan
    np.savez_compressed(shard, **arrays)
    report = run_gate(tables(processed), SPEC)
    assert not report.success
    failure = next(f for f in report.failures if f["column"] == "finite")
    assert failure["examples"][0]["subject"] == shard.stem
    assert f"no NaN or infinity (1 rows; hcp/{shard.stem})" in report.summary()
    assert "**FAIL**" in report.to_markdown()


def test_subject_in_two_splits_foreign_labels_and_out_of_range_values_fail(processed):
    t = tables(processed)
    t["subjects"].loc[0, "n_splits"] = 2
    t["labels"].loc[t["labels"].index[0], "label"] = 3
    t["slices"].loc[0, "max"] = 1.7
    failed = {(f["table"], str(f["column"])) for f in run_gate(t, SPEC).failures}
    assert failed == {("subjects", "n_splits"), ("labels", "label"), ("slices", "max")}


def test_wrong_size_fails(processed):
    report = run_gate(tables(processed), GateSpec(size=64))
    assert {f["column"] for f in report.failures} == {"height", "width"}


def test_a_raw_volume_with_a_singular_affine_or_odd_voxels_is_named(processed, raw_subjects):
    case = next(s for s in raw_subjects if s.dataset == "brats")
    image, affine = load_volume(case.image)
    squashed = affine.copy()
    squashed[:3, 2] *= 1e-8  # the third axis all but collapses: not invertible in practice
    save_volume(image, squashed, case.image)
    seg, seg_affine = load_volume(case.segmentation)
    save_volume(seg[:-1], seg_affine, case.segmentation)  # one row short of the image
    report = run_gate(tables(processed, raw_subjects), SPEC)
    failed = {f["description"]: f for f in report.failures}
    assert set(failed) == {"affine is invertible", "voxel sizes >= 0.2 mm", "mask/segmentation shape equals the image's"}
    assert case.subject_id in failed["affine is invertible"]["examples"][0]["subject"]


def test_a_tumour_split_without_abnormal_slices_fails(processed):
    index = read_index(processed)
    index.loc[(index["cohort"] == "tumour") & (index["split"] == "test"), "tumour_pixels"] = 0
    t = tables(processed)
    t["splits"] = split_table(index, min_tumour_pixels=20)
    failure = next(f for f in run_gate(t, SPEC).failures if f["table"] == "splits")
    assert [(e["cohort"], e["split"]) for e in failure["examples"]] == [("tumour", "test")]
