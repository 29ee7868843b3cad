"""The preprocess stage over whole folders: parallel, deterministic, and a bad case loses nothing else."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from components.data.layouts import LayoutError
from components.data.nifti_io import load_volume, save_volume
from pipelines import preprocess
from pipelines.params import load_params
from tests.conftest import write_params


def project(folder, hcp, brats, **preprocess_params):
    return load_params(write_params(folder, data={"healthy_root": str(hcp), "tumour_root": str(brats)},
                                    preprocess=preprocess_params))


def test_parallel_and_serial_runs_give_the_same_index(phantom_roots, processed_project, tmp_path):
    report = preprocess.run(project(tmp_path, *phantom_roots, workers=1))  # the fixture used 2
    assert report["processed"] == report["volumes"] == 7 and not report["skipped"]
    ours = pd.read_parquet(tmp_path / "data" / "processed" / "index.parquet")
    reference = pd.read_parquet(processed_project / "data" / "processed" / "index.parquet")
    pd.testing.assert_frame_equal(ours, reference)
    assert set(ours["cohort"]) == {"healthy", "tumour"}
    assert ours.groupby("subject")["split"].nunique().max() == 1


def truncate(path):
    path.write_bytes(path.read_bytes()[:2000])


def fill_with_nan(path):
    image, affine = load_volume(path)
    save_volume(np.full_like(image, np.nan), affine, path)


@pytest.mark.parametrize("damage, message", [(truncate, "gzip stream is truncated or corrupt"), (fill_with_nan, "NaN or infinite")])
def test_a_bad_case_is_reported_by_name_and_the_rest_go_on(phantom_roots, tmp_path, damage, message):
    brats = shutil.copytree(phantom_roots[1], tmp_path / "brats")
    victim = sorted(brats.glob("*/*_t2.nii.gz"))[1]
    damage(victim)
    report = preprocess.run(project(tmp_path, phantom_roots[0], brats))
    [skipped] = report["skipped"]
    assert skipped["subject"] == victim.parent.name
    assert str(victim) in skipped["error"] and message in skipped["error"]
    assert report["processed"] == report["volumes"] - 1
    index = pd.read_parquet(tmp_path / "data" / "processed" / "index.parquet")
    assert victim.parent.name not in set(index["subject"]) and index["cohort"].eq("tumour").any()
    assert json.loads((tmp_path / "reports" / "preprocess.json").read_text())["skipped"] == report["skipped"]


def test_an_incomplete_case_is_skipped_or_stops_the_stage(phantom_roots, tmp_path):
    brats = shutil.copytree(phantom_roots[1], tmp_path / "brats")
    missing = sorted(brats.glob("*/*_seg.nii.gz"))[0]
    missing.unlink()
    report = preprocess.run(project(tmp_path, phantom_roots[0], brats))
    [skipped] = report["skipped"]
    assert skipped["subject"] == missing.parent.name and f"missing file: {missing}" == skipped["error"]
    assert report["volumes"] == 7 and report["processed"] == 6
    with pytest.raises(LayoutError, match=f"missing file: {missing}"):
        preprocess.run(project(tmp_path, phantom_roots[0], brats, on_error="stop"))


@pytest.mark.slow  # N4 on every volume: about a minute
def test_a_paper_preset_runs_end_to_end_and_its_spec_carries_the_reference(phantom_roots, tmp_path):
    from components.preprocess.spec import PreprocessSpec
    from pipelines import validate

    params = project(tmp_path, *phantom_roots, preset="dual_vae_improved", size=32)
    report = preprocess.run(params)
    assert report["histogram_reference"].startswith("tumour subject BraTS2021_")
    spec = PreprocessSpec.from_json(tmp_path / "data" / "processed" / "preprocess_spec.json")
    assert spec.bias_correction and spec.value_range == (-1.0, 1.0) and len(spec.histogram_landmarks) == 101
    with np.load(next((tmp_path / "data" / "processed" / "shards").rglob("*.npz"))) as shard:
        assert shard["images"].min() >= -1.0 and (shard["images"] < 0).mean() > 0.3  # background is -1
    assert validate.run(params)["result"].startswith("all")


def test_the_standard_scale_is_the_mean_of_the_healthy_training_subjects(phantom_roots, tmp_path):
    from components.preprocess.spec import PreprocessSpec
    from pipelines.preprocess import _landmarks, assign_all_splits, discover

    params = project(tmp_path, *phantom_roots, histogram_reference="standard", size=32)
    report = preprocess.run(params)
    assert report["histogram_reference"].endswith("healthy training subjects (standard scale)")
    spec = PreprocessSpec.from_json(tmp_path / "data" / "processed" / "preprocess_spec.json")
    subjects = discover(params)
    splits = assign_all_splits(subjects, params)
    train = [s for s in subjects if s.cohort == "healthy" and splits[("healthy", s.subject_id)] == "train"]
    expected = np.mean([_landmarks(s, params.preprocess.spec()) for s in train], axis=0)
    np.testing.assert_allclose(spec.histogram_landmarks, expected, rtol=1e-5)


def test_the_tumour_cohort_can_have_splits_of_its_own(phantom_roots, tmp_path):
    """Few tumour scans: none spent on training (only the dual VAE would learn from them), the
    rest split between validation and test; the healthy cohort keeps the common ratios."""
    preprocess.run(project(tmp_path, *phantom_roots, tumour_split={"train": 0.0, "val": 0.34, "test": 0.66}))
    volumes = pd.read_parquet(tmp_path / "data" / "processed" / "volumes.parquet")
    splits = volumes.groupby("cohort")["split"].apply(lambda s: sorted(s)).to_dict()
    assert splits["tumour"] == ["test", "test", "val"]
    assert "train" in splits["healthy"]
