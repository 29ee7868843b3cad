"""The great-expectations gate over raw and processed data, and its report.

``expectations`` says what valid data looks like, table by table (see tables.py); ``run_gate``
validates each table with great-expectations and collects, for every failed expectation, the
rows (dataset, subject, slice...) that broke it, so the message names the subjects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from a data gate

ID_COLUMNS = ("cohort", "dataset", "subject", "file", "slice", "split")
NIFTI_DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "float32", "float64")


@dataclass(frozen=True)
class DataRules:
    """What valid data looks like whatever the recipe (the ``validate`` section of params.yaml)."""

    max_abs_zscore: float = 30.0  # z-scored slices stay within +-this
    min_brain_coverage: float = 0.05  # mean fraction of a subject's slices covered by brain
    allowed_labels: tuple[int, ...] = (0, 1, 2, 4)  # BraTS segmentation labels
    voxel_size_mm: tuple[float, float] = (0.2, 5.0)  # raw voxel sizes lie in this range
    abnormal_fraction: tuple[float, float] = (0.02, 0.98)  # of tumour-cohort slices in each split

    def __post_init__(self) -> None:
        if self.max_abs_zscore <= 0 or not 0.0 <= self.min_brain_coverage <= 1.0:
            raise ValueError("validate.max_abs_zscore must be > 0 and min_brain_coverage in [0, 1]")
        for name in ("voxel_size_mm", "abnormal_fraction"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"validate.{name} must be [low, high] with 0 <= low <= high, got {[low, high]}")


@dataclass(frozen=True)
class GateSpec:
    """The rules, plus what the processed data's own recipe says: slice size and value range."""

    size: int
    value_range: tuple[float, float] = (0.0, 1.0)  # processed intensities lie in this interval
    rules: DataRules = DataRules()


@dataclass
class GateReport:
    success: bool
    checked: int
    failures: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        if self.success:
            return f"all {self.checked} expectations met"
        lines = [f"{len(self.failures)} of {self.checked} expectations failed:"]
        lines += [f"  - {f['table']}: {f['description']} ({f['unexpected_count']} rows; {_where(f)})" for f in self.failures]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["# Data validation", "", f"**{self.summary().splitlines()[0]}**", "",
                 "| table | expectation | result | unexpected rows | where |", "|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r['table']} | {r['description']} | {'pass' if r['success'] else '**FAIL**'} "
                         f"| {r['unexpected_count'] or 0} | {_where(r) if not r['success'] else ''} |")
        return "\n".join(lines) + "\n"


def _where(result: dict) -> str:
    """The offending subjects (or cohort/split pairs) of a result, a few of them."""
    def name(row: dict) -> str:
        keys = ("dataset", "subject", "file") if "subject" in row else ("cohort", "split")
        return "/".join(str(row[k]) for k in keys if k in row)

    names = sorted({name(e) for e in result["examples"]})
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def expectations(spec: GateSpec) -> dict[str, list]:
    import great_expectations as gx

    e = gx.expectations
    low, high = spec.value_range
    in_range = f"intensities in [{low:g}, {high:g}]"
    tumour = {"row_condition": 'cohort=="tumour" and n_slices>0', "condition_parser": "pandas"}
    return {
        "raw": [
            e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True], description="header readable"),
            e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3], description="volume is 3-D"),
            e.ExpectColumnValuesToBeInSet(column="dtype", value_set=list(NIFTI_DTYPES), description="numeric voxel type"),
            e.ExpectColumnValuesToBeBetween(column="affine_abs_det", min_value=1e-6, description="affine is invertible"),
            e.ExpectColumnValuesToBeBetween(column="min_voxel_mm", min_value=spec.rules.voxel_size_mm[0],
                                            description=f"voxel sizes >= {spec.rules.voxel_size_mm[0]} mm"),
            e.ExpectColumnValuesToBeBetween(column="max_voxel_mm", max_value=spec.rules.voxel_size_mm[1],
                                            description=f"voxel sizes <= {spec.rules.voxel_size_mm[1]} mm"),
            e.ExpectColumnValuesToBeInSet(column="shape_matches_image", value_set=[True],
                                          description="mask/segmentation shape equals the image's"),
        ],
        "labels": [e.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.rules.allowed_labels),
                                                 description=f"segmentation labels in {list(spec.rules.allowed_labels)}")],
        "slices": [
            e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True], description="no NaN or infinity"),
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=low, max_value=high, description=in_range)
              for c in ("min", "max")],
            e.ExpectColumnValuesToBeInSet(column="height", value_set=[spec.size], description=f"height {spec.size} px"),
            e.ExpectColumnValuesToBeInSet(column="width", value_set=[spec.size], description=f"width {spec.size} px"),
            e.ExpectColumnValuesToBeBetween(column="brain_coverage", min_value=1.0 / spec.size**2, max_value=1.0,
                                            description="every slice shows brain"),
            e.ExpectCompoundColumnsToBeUnique(column_list=["dataset", "subject", "slice"], description="no duplicate slice"),
        ],
        "subjects": [
            e.ExpectColumnValuesToBeInSet(column="n_splits", value_set=[1], description="subject in one split only (no leakage)"),
            e.ExpectColumnValuesToBeBetween(column="mean_brain_coverage", min_value=spec.rules.min_brain_coverage,
                                            description=f"mean brain coverage >= {spec.rules.min_brain_coverage:g}"),
        ],
        "splits": [
            e.ExpectColumnValuesToBeBetween(column="n_subjects", min_value=1,
                                            description="every split of every cohort has subjects",
                                            row_condition='split!="train" or cohort=="healthy"', condition_parser="pandas"),
            e.ExpectColumnValuesToBeBetween(column="abnormal_fraction", min_value=spec.rules.abnormal_fraction[0],
                                            max_value=spec.rules.abnormal_fraction[1], **tumour,
                                            description="tumour splits hold both normal and abnormal slices"),
        ],
    }


def run_gate(tables: dict[str, pd.DataFrame], spec: GateSpec) -> GateReport:
    """Validate each table against its suite; failures name the offending rows."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("data")
    report = GateReport(success=True, checked=0)
    for name, suite_expectations in expectations(spec).items():
        table = tables.get(name)
        if table is None or table.empty:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_expectations))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": table}
        )
        ids = [c for c in ID_COLUMNS if c in table.columns]
        result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ids})
        for outcome in result.results:
            report.checked += 1
            config = outcome.expectation_config
            entry = {
                "table": name, "expectation": config.type, "description": config.description or config.type,
                "column": config.kwargs.get("column", config.kwargs.get("column_list")), "success": bool(outcome.success),
                "unexpected_count": outcome.result.get("unexpected_count"),
                "examples": _json_safe(outcome.result.get("unexpected_index_list", [])[:20]),
            }
            report.results.append(entry)
            if not outcome.success:
                report.success = False
                report.failures.append(entry)
    return report


def _json_safe(rows: list) -> list[dict]:
    plain = [row for row in rows if isinstance(row, dict)]
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in plain]
