import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.data.dicom_io import volume_to_series
from components.data.layouts import LayoutError
from components.scoring.archive import ResultStore, find_scans, read_scan


def answer(scores):
    return {"model": {"name": "m", "version": "1", "detector": "d"}, "site": None, "volume_score": max(scores),
            "volume_verdict": "normal", "volume_threshold": 9.0, "slices_scored": len(scores), "slices_skipped": 0,
            "slices": [{"index": i, "score": s, "verdict": "normal"} for i, s in enumerate(scores)]}


def test_results_are_done_once_flushed_and_a_stop_between_writes_leaves_no_orphans(tmp_path):
    store = ResultStore(tmp_path)
    store.add("a", "a.nii.gz", answer([0.1, 0.3]))
    store.add("b", "b.nii.gz", None, "not a NIfTI")
    assert store.done() == set()  # added, not yet written
    store.flush()
    assert ResultStore(tmp_path).done() == {"a", "b"}
    store.add("c", "c.nii.gz", answer([0.2]))
    store.flush()
    (verdicts,) = [p for p in (tmp_path / "verdicts").glob("*.parquet") if "c" in pd.read_parquet(p)["case"].tolist()]
    verdicts.unlink()  # as if stopped after the slices were written, before the verdicts
    assert ResultStore(tmp_path).done() == {"a", "b"}
    assert sorted(pd.read_parquet(tmp_path / "slices")["case"].unique()) == ["a"]  # c's orphan slices are gone


def test_an_archive_is_found_in_plain_folders_of_nifti_and_dicom(tmp_path):
    data, affine = np.ones((8, 8, 6), np.float32), np.eye(4)
    (tmp_path / "a" / "b").mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a" / "one.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a" / "b" / "two.nii")
    (tmp_path / "series").mkdir()
    for number, dicom in enumerate(volume_to_series(data * np.arange(6), affine)):
        (tmp_path / "series" / f"IM{number}").write_bytes(dicom)  # scanners often write no suffix
    scans = {scan.case: scan for scan in find_scans(tmp_path)}
    assert sorted(scans) == ["a/b/two", "a/one", "series"]
    assert scans["series"].kind == "dicom" and len(scans["series"].paths) == 6
    assert read_scan(scans["series"])[0].shape == (6, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no scans under"):
        find_scans(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="archive folder not found"):
        find_scans(tmp_path / "missing")
