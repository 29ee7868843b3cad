"""The comparison tables of several detectors' evaluation metrics, shaped like the papers' tables.

``results`` maps a detector's name to the metrics its `evaluate` stage wrote (plus its training
throughput). Each table is a pandas DataFrame; ``markdown`` renders them all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _pm(metrics: dict, key: str) -> str:
    """'mean ± std' of ``key_mean`` / ``key_std`` style entries, or '-' when absent."""
    mean, std = metrics.get(key.replace("STAT", "mean")), metrics.get(key.replace("STAT", "std"))
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def score_rows(results: dict[str, dict]) -> list[tuple[str, dict]]:
    """(label, metrics) of every score: each detector's own, then its alternatives'."""
    rows = []
    for name, metrics in results.items():
        rows.append((name, metrics))
        for alternative, values in metrics.get("alternative_scores", {}).items():
            rows.append((f"{name} ({alternative})", values))
    return rows


def slice_table(results: dict[str, dict], sizes: list[int]) -> pd.DataFrame:
    """dual-vae-latent-distance-improved.txt Table 1: per tumour size T, each score's ROC-AUC,
    accuracy and F1 (5-fold cross-validated threshold), mean ± std."""
    records = [
        {"T": size, "method": label, "ROC-AUC": _pm(m, f"cv_auroc_STAT_t{size}"),
         "accuracy": _pm(m, f"cv_accuracy_STAT_t{size}"), "F1": _pm(m, f"cv_f1_STAT_t{size}")}
        for size in sizes for label, m in score_rows(results)
    ]
    return pd.DataFrame(records)


def pixel_table(results: dict[str, dict]) -> pd.DataFrame:
    """anovaegan-spatial-autoencoders.txt Table 1: Dice at the healthy threshold (mean ± std over
    patients), the test-label best Dice (labelled as such), pixel AUROC / AUPRC, and time; and the
    IntroVAE paper's rectified ROC-AUC (mean ± std over patients)."""
    return pd.DataFrame([
        {"detector": name, "Dice": _pm(m, "dice_STAT"), "best Dice (oracle)": _num(m.get("best_dice_oracle")),
         "pixel AUROC": _num(m.get("pixel_auroc")), "pixel AUPRC": _num(m.get("pixel_auprc")),
         "rectified AUROC": _pm(m, "rectified_auroc_STAT"),
         "ms / slice": _num(m.get("inference_ms_per_slice"), 1)}
        for name, m in results.items()
    ])


def lesion_kinds(results: dict[str, dict]) -> list[str]:
    """The other-lesion kinds any detector was scored on (``other_lesion_<kind>_slice_auroc``)."""
    keys = {key for metrics in results.values() for key in metrics} - {"other_lesion_slice_auroc"}
    prefix, suffix = "other_lesion_", "_slice_auroc"
    return sorted(key[len(prefix):-len(suffix)] for key in keys if key.startswith(prefix) and key.endswith(suffix))


def test_split_table(results: dict[str, dict]) -> pd.DataFrame:
    """The test split at the healthy-validation threshold, other lesions (all, then each kind:
    lesions the detector never saw), and training speed."""
    return pd.DataFrame([
        {"detector": name, "slice AUROC": _num(m.get("slice_auroc")), "AUPRC": _num(m.get("slice_auprc")),
         "accuracy": _num(m.get("slice_accuracy")), "F1": _num(m.get("slice_f1")),
         "other lesions AUROC": _num(m.get("other_lesion_slice_auroc")),
         **{f"{kind} AUROC": _num(m.get(f"other_lesion_{kind}_slice_auroc")) for kind in lesion_kinds(results)},
         "train slices / s": _num(m.get("train_slices_per_s"), 1), "train s": _num(m.get("train_seconds"), 0)}
        for name, m in results.items()
    ])


def score_table(results: dict[str, dict]) -> pd.DataFrame:
    """latent-constrained-adversarial-detector.txt Tables 5/6 and the dual-VAE baselines: the
    slice AUROC of each detector's score beside its alternative scores'."""
    return pd.DataFrame([
        {"score": label, "slice AUROC (test)": _num(m.get("slice_auroc"))} for label, m in score_rows(results)
        if label != label.split(" ")[0] or m.get("alternative_scores")
    ])


def markdown(results: dict[str, dict], sizes: list[int]) -> str:
    sections = [
        ("Slice-wise, 5-fold cross-validated threshold (dual-VAE paper, Table 1)", slice_table(results, sizes)),
        ("Pixel-wise (spatial-autoencoder paper, Table 1)", pixel_table(results)),
        ("Test split at the healthy-validation threshold", test_split_table(results)),
        ("Each detector's score against the scores its paper compares with", score_table(results)),
    ]
    return "\n\n".join(f"### {title}\n\n{table.to_markdown(index=False)}" for title, table in sections if len(table)) + "\n"


BASELINE = "intensity"  # the detector every other must beat


def _ci(metrics: dict, key: str) -> str:
    """'value [low, high]' of a metric with its 95 % interval (``ci95``), or '-'."""
    value, interval = metrics.get(key), metrics.get("ci95", {}).get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.3f} [{interval['low']:.2f}, {interval['high']:.2f}]" if interval else f"{value:.3f}"


def _counted(metrics: dict, key: str) -> str:
    """'flagged/of [low, high]': a rate's count with its 95 % interval (exact binomial, ``ci95``), or '-'."""
    count, interval = metrics.get("counts", {}).get(key), metrics.get("ci95", {}).get(key)
    if not count or not interval:
        return _ci(metrics, key)
    return f"{count['flagged']}/{count['of']} [{interval['low']:.2f}, {interval['high']:.2f}]"


def _beaten(results: dict[str, dict], name: str, site: str) -> str:
    """' ▽' when the intensity baseline ranks this site's slices better than ``name`` does."""
    baseline = results.get(BASELINE, {}).get(site)
    mine = results[name].get(site)
    if name == BASELINE or not baseline or not mine:
        return ""
    return " ▽" if mine["slice_auroc"] < baseline["slice_auroc"] else ""


def site_tables(results: dict[str, dict[str, dict]]) -> list[tuple[str, pd.DataFrame]]:
    """Cross-site tables, rows detectors and columns sites, from each detector's `sites` report
    ({detector: {site: metrics}})."""
    sites = list(dict.fromkeys(site for report in results.values() for site in report))

    def table(cell) -> pd.DataFrame:
        return pd.DataFrame([{"detector": name, **{site: cell(report[site]) if site in report else "-" for site in sites}}
                             for name, report in results.items()])

    def false_alarms(m: dict) -> str:
        return f"{_ci(m['deployed'], 'slice_false_alarm_rate')} → {_ci(m['calibrated'], 'slice_false_alarm_rate')}"

    ranking = pd.DataFrame([{"detector": name, **{site: _ci(report[site], "slice_auroc") + _beaten(results, name, site)
                                                  if site in report else "-" for site in sites}}
                            for name, report in results.items()])
    return [
        ("Slice AUROC [95 % interval over subjects] per site (▽: below the intensity baseline)", ranking),
        ("Tumour-free slices flagged: at the deployed threshold → after site calibration", table(false_alarms)),
        ("Healthy volumes flagged after site calibration [exact 95 % interval]",
         table(lambda m: _counted(m["calibrated"], "volume_false_alarm_rate"))),
        ("Tumour volumes caught after site calibration [exact 95 % interval]",
         table(lambda m: _counted(m["calibrated"], "volume_sensitivity"))),
        ("Tumour slices flagged after site calibration (sensitivity)", table(lambda m: _ci(m["calibrated"], "slice_sensitivity"))),
        ("Pixel AUPRC", table(lambda m: _num(m.get("pixel_auprc")))),
        ("Dice after site calibration (mean over tumour subjects)", table(lambda m: _ci(m["calibrated"], "dice_mean"))),
    ]


def site_markdown(results: dict[str, dict[str, dict]]) -> str:
    return "\n\n".join(f"### {title}\n\n{table.to_markdown(index=False)}" for title, table in site_tables(results)) + "\n"
