"""benchmarks/gpu_check.py, the script a GPU machine runs, run here on the CPU so that it cannot
rot where CI has no GPU."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_times_both_precisions_and_records_them(tmp_path):
    output = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--detectors", "spatial_ae",
                    "--sizes", "32", "--batches", "2", "--repeats", "1", "--skip-tests", "--output", str(output)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    record = json.loads(output.read_text())
    assert [(r["precision"], r["size"], r["batch"]) for r in record["runs"]] == [("fp32", 32, 2), ("bf16", 32, 2)]
    assert all(r["train_slices_per_s"] > 0 and r["inference_ms_per_slice"] > 0 for r in record["runs"])
    assert record["targets"]["default_detector"] and record["gpu_tests"] is None
