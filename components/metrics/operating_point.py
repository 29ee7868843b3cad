"""What a radiology group sees at the deployed thresholds, with confidence intervals.

Beside the ranking metrics (slice AUROC / AUPRC), at the thresholds a model is served with:

- ``slice_false_alarm_rate``: the share of tumour-free slices (no tumour, no other lesion) flagged;
- ``healthy_slice_false_alarm_rate``: the share of healthy subjects' slices flagged (what a site
  that scans mostly healthy people sees; tumour scans' tumour-free slices lie nearer a tumour);
- ``volume_false_alarm_rate``: the share of healthy volumes flagged (a volume's score is its
  most anomalous slice's);
- ``slice_sensitivity`` / ``volume_sensitivity``: the share of abnormal slices / tumour volumes
  flagged;
- ``dice_mean``: the mean over tumour subjects of the Dice of the thresholded maps.

Each comes with a 95 % interval (``ci95``). AUROC, AUPRC and Dice: a percentile bootstrap over
subjects (resampled with replacement, healthy and tumour subjects apart so that every draw holds
both; slices of one subject are not independent, subjects are). A rate: its count (``counts``:
flagged, of) and the exact binomial (Clopper-Pearson) interval of that count, which reads 0 of
4 healthy volumes flagged as [0, 0.60] where the bootstrap collapses to [0, 0]; for slice rates
widened to the bootstrap's where that is wider, since the binomial treats a scan's slices as
independent.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from components.metrics.conformal import exact_interval

OPERATING_POINT = ("slice_false_alarm_rate", "healthy_slice_false_alarm_rate", "volume_false_alarm_rate",
                   "slice_sensitivity", "volume_sensitivity")


def resampled_subjects(strata: list[np.ndarray], samples: int, seed: int) -> Iterator[np.ndarray]:
    """``samples`` bootstrap draws of subject ids: each stratum resampled with replacement, to its own size."""
    rng = np.random.default_rng(seed)
    strata = [np.asarray(s) for s in strata if len(s)]
    for _ in range(samples):
        yield np.concatenate([rng.choice(stratum, size=len(stratum)) for stratum in strata])


def _ranking(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    if labels.all() or not labels.any():
        return {"slice_auroc": float("nan"), "slice_auprc": float("nan")}
    return {"slice_auroc": float(roc_auc_score(labels, scores)), "slice_auprc": float(average_precision_score(labels, scores))}


def detection_metrics(slices: Mapping, subjects: Mapping, slice_threshold: float, volume_threshold: float,
                      ranking: bool = True) -> dict[str, float]:
    """The metrics of the module docstring (``ranking``: slice AUROC / AUPRC too) on one set of subjects.

    ``slices``: per slice: subject, abnormal, rated, tumour_free (bools), score. ``subjects``: per
    subject: subject, cohort ('healthy' or 'tumour'), volume_score, dice (NaN without a tumour).
    Columns of a DataFrame or arrays in a dict."""
    rated = np.asarray(slices["rated"], bool)
    abnormal, score = np.asarray(slices["abnormal"], bool), np.asarray(slices["score"], float)
    dice = np.asarray(subjects["dice"], float)
    rates = {name: flagged / among if among else float("nan")
             for name, (flagged, among) in rate_counts(slices, subjects, slice_threshold, volume_threshold).items()}
    return {
        **(_ranking(abnormal[rated], score[rated]) if ranking else {}),
        **rates,
        "dice_mean": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
    }


def rate_counts(slices: Mapping, subjects: Mapping, slice_threshold: float,
                volume_threshold: float) -> dict[str, tuple[int, int]]:
    """Each rate of ``OPERATING_POINT`` as (flagged, of), on ``detection_metrics``'s inputs."""
    flagged = np.asarray(slices["score"], float) > slice_threshold
    healthy = np.asarray(subjects["cohort"]) == "healthy"
    volume_flagged = np.asarray(subjects["volume_score"], float) > volume_threshold
    among = {
        "slice_false_alarm_rate": (flagged, np.asarray(slices["tumour_free"], bool)),
        "healthy_slice_false_alarm_rate": (flagged, np.isin(np.asarray(slices["subject"]),
                                                            np.asarray(subjects["subject"])[healthy])),
        "slice_sensitivity": (flagged, np.asarray(slices["abnormal"], bool)),
        "volume_false_alarm_rate": (volume_flagged, healthy),
        "volume_sensitivity": (volume_flagged, ~healthy),
    }
    return {name: (int(hits[rows].sum()), int(rows.sum())) for name, (hits, rows) in among.items()}


def metric_frames(index: pd.DataFrame, scores: np.ndarray, abnormal: np.ndarray, rated: np.ndarray,
                  dice: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(slices, subjects) for ``detection_metrics`` from a slice index (subject, cohort,
    tumour_pixels, lesion_pixels), its slice scores and labels, and each tumour subject's Dice."""
    slices = pd.DataFrame({
        "subject": index["subject"].to_numpy(), "abnormal": np.asarray(abnormal, bool), "rated": np.asarray(rated, bool),
        "tumour_free": (index["tumour_pixels"].to_numpy() == 0) & (index["lesion_pixels"].to_numpy() == 0),
        "score": np.asarray(scores, float)})
    subjects = (slices.assign(cohort=index["cohort"].to_numpy()).groupby("subject", sort=False)
                .agg(cohort=("cohort", "first"), volume_score=("score", "max")).reset_index())
    subjects["dice"] = subjects["subject"].map(dice).astype(float)
    return slices, subjects


def bootstrap_intervals(metric: Callable[[Mapping, Mapping], dict[str, float]], slices: pd.DataFrame,
                        subjects: pd.DataFrame, samples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """{name: {"low", "high"}}: the central ``confidence`` interval of each of ``metric``'s values over
    ``samples`` draws of subjects (healthy and tumour subjects resampled apart)."""
    slice_rows = {s: np.asarray(rows) for s, rows in slices.groupby("subject", sort=False).indices.items()}
    subject_rows = {s: i for i, s in enumerate(subjects["subject"])}
    slice_columns = {c: slices[c].to_numpy() for c in slices.columns}
    subject_columns = {c: subjects[c].to_numpy() for c in subjects.columns}
    strata = [subjects.loc[subjects["cohort"] == c, "subject"].to_numpy() for c in ("healthy", "tumour")]
    draws = []
    for drawn in resampled_subjects(strata, samples, seed):
        rows = np.concatenate([slice_rows.get(s, np.zeros(0, int)) for s in drawn])
        people = np.array([subject_rows[s] for s in drawn])
        draws.append(metric({c: v[rows] for c, v in slice_columns.items()},
                            {c: v[people] for c, v in subject_columns.items()}))
    tail = (1 - confidence) / 2
    table = pd.DataFrame(draws)
    return {name: {"low": float(np.nanquantile(values, tail)), "high": float(np.nanquantile(values, 1 - tail))}
            for name, values in table.items() if np.isfinite(values).any()}


def with_intervals(slices: pd.DataFrame, subjects: pd.DataFrame, slice_threshold: float, volume_threshold: float,
                   samples: int = 1000, seed: int = 0, ranking: bool = True) -> dict:
    """``detection_metrics``, with ``ci95``: for AUROC, AUPRC and Dice the bootstrap interval over
    subjects; for a rate (``counts``: how many of how many) its exact binomial interval, which
    never collapses at 0 of n as the bootstrap's does. A slice rate's is widened to the bootstrap's
    where that is wider: slices of one scan rise and fall together, which the binomial ignores."""
    def metric(s, v):
        return detection_metrics(s, v, slice_threshold, volume_threshold, ranking)

    counts = rate_counts(slices, subjects, slice_threshold, volume_threshold)
    intervals = bootstrap_intervals(metric, slices, subjects, samples, seed)
    for name, (flagged, of) in counts.items():
        if not of:
            continue
        low, high = exact_interval(flagged, of)
        if name.startswith("slice") or name.startswith("healthy_slice"):
            low, high = min(low, intervals.get(name, {}).get("low", low)), max(high, intervals.get(name, {}).get("high", high))
        intervals[name] = {"low": low, "high": high}
    return {**metric(slices, subjects), "ci95": intervals,
            "counts": {name: {"flagged": k, "of": n} for name, (k, n) in counts.items()}}
