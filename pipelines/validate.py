"""Stage `validate`: the great-expectations gate over the raw files used and the processed
slices; a violation stops `dvc repro`, naming the expectation and the subjects. Writes
reports/validation.json (machine-readable) and reports/validation.md (a table to read)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.atomic import write_text
from components.data.slice_store import read_index
from components.preprocess.spec import PreprocessSpec
from components.validation.gate import GateSpec, run_gate
from components.validation.tables import label_table, raw_table, slice_table, split_table, subject_table
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR, discover

REPORT = Path("reports/validation.json")
MARKDOWN = Path("reports/validation.md")


class DataValidationError(ValueError):
    """The data broke an expectation; the message lists which, for which subjects."""


def gate_spec(params: Params, processed: PreprocessSpec) -> GateSpec:
    z = params.validation.max_abs_zscore
    return GateSpec(size=processed.size, value_range=processed.output_range or (-z, z), rules=params.validation)


def run(params: Params) -> dict:
    root = params.path(PROCESSED_DIR)
    index = read_index(root)
    volumes = pd.read_parquet(root / "volumes.parquet")
    used = set(zip(volumes["cohort"], volumes["subject"]))
    subjects = [s for s in discover(params, incomplete=[]) if (s.cohort, s.subject_id) in used]
    slices = slice_table(root, index)
    tables = {
        "raw": raw_table(subjects),
        "labels": label_table(volumes),
        "slices": slices,
        "subjects": subject_table(slices),
        "splits": split_table(index, params.evaluate.min_tumour_pixels),
    }
    report = run_gate(tables, gate_spec(params, PreprocessSpec.from_json(root / "preprocess_spec.json")))
    for path, text in ((REPORT, json.dumps({"success": report.success, "checked": report.checked,
                                            "failures": report.failures}, indent=2)),
                       (MARKDOWN, report.to_markdown())):
        write_text(params.path(path), text)
    if not report.success:
        raise DataValidationError(f"data validation failed (report: {params.path(MARKDOWN)})\n{report.summary()}")
    return {"report": str(params.path(MARKDOWN)), "result": report.summary()}
