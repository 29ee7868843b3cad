"""Outputs are never half-written: a writer that fails or is killed leaves the previous file."""

import os
import signal
import subprocess
import sys
import time

import pytest

from components.atomic import atomic_path, write_json

WRITER = """
import sys, time
from components.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as file:
        for _ in range(1000):
            file.write(b"new" * 1000)
            file.flush()
            time.sleep(0.01)
"""


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "metrics.json", {"auroc": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"auroc": 0.')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "auroc": 0.9\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_killed_writer_leaves_the_previous_file(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=os.getcwd())
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".weights.pt.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(tmp_path.glob(".weights.pt.*")), "the writer never started: the test proved nothing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == b"old"


def test_writers_that_pick_a_format_by_extension_still_work(tmp_path):
    import nibabel as nib
    import numpy as np

    from components.data.nifti_io import load_volume, save_volume

    path = save_volume(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "scan.nii.gz")
    assert isinstance(nib.load(path), nib.Nifti1Image) and load_volume(path)[0].sum() == 64
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]
