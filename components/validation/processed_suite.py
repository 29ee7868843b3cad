"""Great-expectations gate over the processed data.

Three tables are checked, each built from what is on disk (the shards themselves, not the
preprocess stage's own account of them):

- ``slices``:  one row per slice: finite, min, max, height, width, brain_coverage, split
- ``subjects``: one row per (dataset, subject): the number of splits its slices landed in
- ``labels``:  one row per segmentation label value found in a raw BraTS volume
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.slice_store import load_shard

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from a data gate


@dataclass(frozen=True)
class GateSpec:
    """What valid processed data looks like."""

    size: int
    max_value: float = 1.0
    min_brain_coverage: float = 0.05
    allowed_labels: tuple[int, ...] = (0, 1, 2, 4)


@dataclass
class GateReport:
    success: bool
    checked: int
    failures: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        if self.success:
            return f"all {self.checked} expectations met"
        lines = [f"{len(self.failures)} of {self.checked} expectations failed:"]
        for f in self.failures:
            where = ", ".join(sorted({str(e.get("subject", "?")) for e in f["examples"]})[:5])
            lines.append(f"  - {f['table']}: {f['expectation']} on {f['column']} ({f['unexpected_count']} rows; subjects: {where})")
        return "\n".join(lines)


def slice_table(root: Path, index: pd.DataFrame) -> pd.DataFrame:
    """Per-slice statistics computed from the shards."""
    rows = []
    for shard, group in index.groupby("shard", sort=False):
        arrays = load_shard(root, shard)
        images, brain = arrays["images"], arrays["brain"]
        for _, entry in group.iterrows():
            image, mask = images[entry["row"], 0], brain[entry["row"], 0]
            finite = bool(np.isfinite(image).all())
            rows.append({
                "dataset": entry["dataset"], "subject": entry["subject"], "slice": int(entry["slice"]),
                "split": entry["split"], "finite": finite,
                "min": float(np.nanmin(image)) if finite else np.nan,
                "max": float(np.nanmax(image)) if finite else np.nan,
                "height": image.shape[0], "width": image.shape[1], "brain_coverage": float(mask.mean()),
            })
    return pd.DataFrame(rows)


def subject_table(index: pd.DataFrame) -> pd.DataFrame:
    return index.groupby(["dataset", "subject"])["split"].nunique().rename("n_splits").reset_index()


def label_table(volumes: pd.DataFrame) -> pd.DataFrame:
    labelled = volumes[volumes["seg_labels"].map(len) > 0]
    table = labelled[["dataset", "subject", "seg_labels"]].explode("seg_labels").rename(columns={"seg_labels": "label"})
    return table.astype({"label": int}) if len(table) else pd.DataFrame({"dataset": [], "subject": [], "label": []})


def expectations(spec: GateSpec) -> dict[str, list]:
    import great_expectations as gx

    e = gx.expectations
    return {
        "slices": [
            e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            e.ExpectColumnValuesToBeBetween(column="min", min_value=0.0, max_value=spec.max_value),
            e.ExpectColumnValuesToBeBetween(column="max", min_value=0.0, max_value=spec.max_value),
            e.ExpectColumnValuesToBeInSet(column="height", value_set=[spec.size]),
            e.ExpectColumnValuesToBeInSet(column="width", value_set=[spec.size]),
            e.ExpectColumnValuesToBeBetween(column="brain_coverage", min_value=spec.min_brain_coverage, max_value=1.0),
            e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
            e.ExpectCompoundColumnsToBeUnique(column_list=["dataset", "subject", "slice"]),
        ],
        "subjects": [e.ExpectColumnValuesToBeInSet(column="n_splits", value_set=[1])],
        "labels": [e.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.allowed_labels))],
    }


def run_gate(tables: dict[str, pd.DataFrame], spec: GateSpec) -> GateReport:
    """Validate each table against its suite; failures name the offending subjects."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("processed")
    report = GateReport(success=True, checked=0)
    for name, suite_expectations in expectations(spec).items():
        table = tables[name]
        if table.empty:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_expectations))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": table}
        )
        ids = [c for c in ("dataset", "subject", "slice") if c in table.columns]
        result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ids})
        for outcome in result.results:
            report.checked += 1
            if outcome.success:
                continue
            report.success = False
            config = outcome.expectation_config
            report.failures.append({
                "table": name,
                "expectation": config.type,
                "column": config.kwargs.get("column", config.kwargs.get("column_list")),
                "unexpected_count": outcome.result.get("unexpected_count"),
                "examples": _json_safe(outcome.result.get("unexpected_index_list", [])[:20]),
            })
    return report


def _json_safe(rows: list) -> list[dict]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in rows if isinstance(row, dict)]
