"""`brainomaly score`: a whole archive on a real local Ray, with the model `dvc repro` registered."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.data.dicom_io import volume_to_series
from components.data.layouts import read_brats
from components.data.nifti_io import load_volume
from components.scoring.archive import ResultStore, find_scans
from tests.conftest import venv_env, write_params

pytestmark = pytest.mark.slow
BRAINOMALY = str(Path(sys.executable).parent / "brainomaly")


def score(project: Path, archive: Path, output: Path, *options: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([BRAINOMALY, "score", "--params", "params-score.yaml", "--input", str(archive),
                           "--output", str(output), *options], cwd=project, env=venv_env(), capture_output=True,
                          text=True, timeout=900, **popen)


def archive_of(pipeline_repo: Path, folder: Path, copies: int = 1) -> Path:
    """NIfTI scans in nested folders, one scan as a DICOM series, a corrupt file, a broken series."""
    cases = read_brats(pipeline_repo / "data" / "raw" / "brats")[:2]
    for copy in range(copies):
        for case in cases:
            target = folder / f"ward{copy}" / f"{case.subject_id}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(case.image, target)
    series = volume_to_series(*load_volume(cases[0].image))
    for name, files in (("series-ok", series), ("series-gap", series[:20] + series[21:])):
        (folder / "dicom" / name).mkdir(parents=True)
        for number, data in enumerate(files):
            (folder / "dicom" / name / f"IM{number:04d}.dcm").write_bytes(data)
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder


def test_an_archive_is_scored_with_the_reasons_for_what_cannot_be(pipeline_repo, tmp_path):
    write_params(pipeline_repo, "params-score.yaml", score={"volumes_per_batch": 2})
    archive = archive_of(pipeline_repo, tmp_path / "archive")
    result = score(pipeline_repo, archive, tmp_path / "out", "--maps")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["scans"], summary["scored"], summary["failed"]) == (5, 3, 2)
    verdicts = pd.read_parquet(tmp_path / "out" / "verdicts")
    failed = pd.read_parquet(tmp_path / "out" / "failed").set_index("case")["error"]
    assert sorted(verdicts["case"]) == ["dicom/series-ok", "ward0/BraTS2021_00000", "ward0/BraTS2021_00001"]
    assert "gzip stream is truncated or corrupt" in failed["corrupt"] and "gap" in failed["dicom/series-gap"]
    slices = pd.read_parquet(tmp_path / "out" / "slices")
    assert (slices.groupby("case").size() == verdicts.set_index("case")["slices_scored"]).all()
    assert (slices.groupby("case")["score"].max() == verdicts.set_index("case")["volume_score"]).all()
    # the DICOM series scores as the NIfTI it was written from (up to its 16-bit storage)
    by_case = verdicts.set_index("case")["volume_score"]
    assert by_case["dicom/series-ok"] == pytest.approx(by_case["ward0/BraTS2021_00000"], rel=0.02)
    heat = nib.load(tmp_path / "out" / "maps" / "ward0" / "BraTS2021_00000.nii.gz")
    source = nib.load(archive / "ward0" / "BraTS2021_00000.nii.gz")
    assert heat.shape == source.shape and np.allclose(heat.affine, source.affine)
    again = score(pipeline_repo, archive, tmp_path / "out")
    assert json.loads(again.stdout)["done_before"] == 5 and json.loads(again.stdout)["scored"] == 0


def test_actors_that_leave_no_cpu_to_prepare_scans_are_refused_without_a_hang(pipeline_repo, tmp_path):
    write_params(pipeline_repo, "params-score.yaml", score={"actors": 8, "cpus_per_actor": 1})
    archive = archive_of(pipeline_repo, tmp_path / "archive")
    result = score(pipeline_repo, archive, tmp_path / "out")  # ends well within its timeout: no wait for the actors
    assert result.returncode == 1
    assert "score.actors x score.cpus_per_actor / gpus_per_actor (8 x 1 / 0) and one CPU to prepare scans need 9 CPUs" \
        in " ".join((result.stdout + result.stderr).split())
    assert not ResultStore(tmp_path / "out").done()  # nothing scored, nothing recorded as done


def test_a_rerun_after_ctrl_c_goes_on_where_it_stopped(pipeline_repo, tmp_path):
    """Stopped by SIGINT once some scans are saved, the rerun scores only the others: no scan is
    lost and none is scored twice (a restart would score all of them again)."""
    write_params(pipeline_repo, "params-score.yaml", score={"volumes_per_batch": 1, "flush_every": 1})
    archive = archive_of(pipeline_repo, tmp_path / "archive", copies=6)
    total = len(find_scans(archive))
    output = tmp_path / "out"
    process = subprocess.Popen([BRAINOMALY, "score", "--params", "params-score.yaml", "--input", str(archive),
                                "--output", str(output)], cwd=pipeline_repo, env=venv_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((output / "verdicts").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    saved = ResultStore(output).done()
    assert 0 < len(saved) < total, stderr[-3000:]
    rerun = score(pipeline_repo, archive, output)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["done_before"] == len(saved) and summary["scored"] + summary["failed"] == total - len(saved)
    cases = pd.concat([pd.read_parquet(output / "verdicts")["case"], pd.read_parquet(output / "failed")["case"]])
    assert sorted(cases) == sorted(scan.case for scan in find_scans(archive))  # each scan once
    slices = pd.read_parquet(output / "slices")
    assert not slices.duplicated(["case", "index"]).any()
