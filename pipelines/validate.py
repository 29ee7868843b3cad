"""Stage `validate`: the great-expectations gate; a violation stops `dvc repro` with a report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.data.slice_store import read_index
from components.validation.processed_suite import GateSpec, label_table, run_gate, slice_table, subject_table
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR

REPORT = Path("reports/validation.json")


class DataValidationError(ValueError):
    """The processed data broke an expectation; the message lists which, for which subjects."""


def run(params: Params) -> dict:
    root = params.path(PROCESSED_DIR)
    index = read_index(root)
    tables = {
        "slices": slice_table(root, index),
        "subjects": subject_table(index),
        "labels": label_table(pd.read_parquet(root / "volumes.parquet")),
    }
    spec = GateSpec(size=params.preprocess.size, max_value=params.validation.max_value,
                    min_brain_coverage=params.validation.min_brain_coverage,
                    allowed_labels=tuple(params.validation.allowed_labels))
    report = run_gate(tables, spec)
    path = params.path(REPORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"success": report.success, "checked": report.checked, "failures": report.failures}, indent=2))
    if not report.success:
        raise DataValidationError(f"data validation failed (report: {path})\n{report.summary()}")
    return {"report": str(path), "result": report.summary()}
