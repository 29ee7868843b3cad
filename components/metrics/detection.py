"""Slice-wise and pixel-wise detection metrics.

Slice-wise (dual-VAE papers): a slice is abnormal when its tumour had more than
``min_tumour_pixels`` annotated pixels before resizing; scores rank slices.
Pixel-wise (spatial-autoencoder paper): every pixel inside the brain is a sample; Dice compares
the thresholded anomaly map with the tumour mask, per subject.
Other lesions (kinds the detector was never tuned for): slices holding one and no tumour against
slices holding neither.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

from components.metrics.postprocess import segment, subject_blocks


def slice_labels(tumour_pixels: np.ndarray, min_tumour_pixels: int) -> np.ndarray:
    return np.asarray(tumour_pixels) > min_tumour_pixels


def slice_truth(tumour_pixels, lesion_pixels, min_tumour_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """The one slice label every metric uses, from the slice index (counts before resizing):
    (abnormal, rated). Abnormal: more than ``min_tumour_pixels`` of tumour. A slice with another
    lesion (a focus, a cavity) and no such tumour is neither tumour nor normal tissue: not rated."""
    labels = slice_labels(tumour_pixels, min_tumour_pixels)
    return labels, labels | ~(np.asarray(lesion_pixels) > 0)


def _both_classes(labels: np.ndarray, what: str) -> None:
    if labels.all() or not labels.any():
        raise ValueError(f"{what} needs both normal and abnormal samples; got only {'abnormal' if labels.all() else 'normal'} ones")


def slice_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC and AUPRC of slice scores, and accuracy / F1 of the verdict ``score > threshold``."""
    labels = np.asarray(labels, bool)
    _both_classes(labels, "slice-wise evaluation")
    verdicts = np.asarray(scores) > threshold
    return {
        "slice_auroc": float(roc_auc_score(labels, scores)),
        "slice_auprc": float(average_precision_score(labels, scores)),
        "slice_accuracy": float(accuracy_score(labels, verdicts)),
        "slice_f1": float(f1_score(labels, verdicts, zero_division=0)),
        "slices_abnormal": int(labels.sum()),
        "slices_normal": int((~labels).sum()),
    }


def slice_metrics_by_size(
    scores: np.ndarray, tumour_pixels: np.ndarray, lesion_pixels: np.ndarray, sizes: list[int], threshold: float
) -> dict[str, float]:
    """The slice-wise protocol of dual-vae-latent-distance-improved.txt Table 1 for each T in
    ``sizes``: a slice is abnormal when its tumour had more than T pixels before resizing; slices
    with other lesions and no such tumour are left out. Keys end in ``_t<T>``; a T that leaves
    one class empty is skipped."""
    found = {}
    for size in sizes:
        labels, rated = slice_truth(tumour_pixels, lesion_pixels, size)
        if labels[rated].all() or not labels[rated].any():
            continue
        metrics = slice_metrics(np.asarray(scores)[rated], labels[rated], threshold)
        found |= {f"{k}_t{size}": v for k, v in metrics.items() if k in ("slice_auroc", "slice_accuracy", "slice_f1")}
    return found


def other_lesion_metrics(scores, tumour_pixels, lesion_pixels, threshold: float, kind_pixels=None,
                         prefix: str = "other_lesion") -> dict[str, float]:
    """Slice AUROC and sensitivity at ``threshold`` for slices with other lesions (of one kind
    when ``kind_pixels`` is given) and no tumour, against slices with no lesion and no tumour;
    empty when there is no such slice."""
    scores, tumour, lesion = np.asarray(scores), np.asarray(tumour_pixels) > 0, np.asarray(lesion_pixels) > 0
    lesion_only = (lesion if kind_pixels is None else np.asarray(kind_pixels) > 0) & ~tumour
    clean = ~lesion & ~tumour
    if not lesion_only.any() or not clean.any():
        return {}
    keep = lesion_only | clean
    return {
        f"{prefix}_slice_auroc": float(roc_auc_score(lesion_only[keep], scores[keep])),
        f"{prefix}_sensitivity": float((scores[lesion_only] > threshold).mean()),
        f"{prefix}_slices": int(lesion_only.sum()),
    }


def lesion_kind_metrics(scores, index, threshold: float, kinds: dict[int, str]) -> dict[str, float]:
    """``other_lesion_metrics`` for each kind named in ``kinds`` that has a column
    ``lesion_pixels_<kind>`` in the slice ``index`` (keys ``other_lesion_<name>_*``)."""
    found = {}
    for kind, name in kinds.items():
        column = f"lesion_pixels_{kind}"
        if column in index:
            found |= other_lesion_metrics(scores, index["tumour_pixels"], index["lesion_pixels"], threshold,
                                          index[column], prefix=f"other_lesion_{name}")
    return found


def roc_table(scores: np.ndarray, labels: np.ndarray, max_points: int = 200) -> pd.DataFrame:
    """ROC curve points (fpr, tpr, threshold), thinned to at most ``max_points`` rows for plotting."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return pd.DataFrame({"fpr": fpr[keep], "tpr": tpr[keep], "threshold": np.nan_to_num(thresholds[keep], posinf=1e9)})


def pixel_metrics(maps: np.ndarray, tumour: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC over the pixels inside the brain; arrays (N, 1, H, W)."""
    inside = np.asarray(brain, bool)
    truth = np.asarray(tumour, bool)[inside]
    _both_classes(truth, "pixel-wise evaluation")
    values = np.asarray(maps)[inside]
    return {"pixel_auroc": float(roc_auc_score(truth, values)), "pixel_auprc": float(average_precision_score(truth, values))}


def rectified_auroc(maps: np.ndarray, truth: np.ndarray, thresholds: int = 1000) -> float:
    """The IntroVAE paper's rectified ROC-AUC of one subject: ``maps`` (the voxels inside its
    brain only, which rectifies the background's imbalance) Z-scored, ``thresholds`` evenly spaced
    operating points over their range, the curve closed at (0, 0) and (1, 1), trapezoidal area."""
    values, truth = np.asarray(maps, float), np.asarray(truth, bool)
    _both_classes(truth, "rectified ROC-AUC")
    z = (values - values.mean()) / (values.std() or 1.0)
    cuts = np.linspace(z.min(), z.max(), thresholds)

    def rate_above(sample: np.ndarray) -> np.ndarray:  # share of ``sample`` >= each cut
        return 1.0 - np.searchsorted(np.sort(sample), cuts, side="left") / len(sample)

    tpr = np.concatenate([[1.0], rate_above(z[truth]), [0.0]])
    fpr = np.concatenate([[1.0], rate_above(z[~truth]), [0.0]])
    return float(-np.trapezoid(tpr, fpr))


def rectified_auroc_per_subject(maps: np.ndarray, tumour: np.ndarray, brain: np.ndarray, subjects: np.ndarray,
                                thresholds: int = 1000) -> dict[str, float]:
    """``rectified_auroc`` of each subject with a tumour, mean and std across subjects (the
    IntroVAE paper's Table I); arrays (N, 1, H, W)."""
    subjects, brain, tumour = np.asarray(subjects), np.asarray(brain, bool), np.asarray(tumour, bool)
    values = [rectified_auroc(maps[rows][brain[rows]], tumour[rows][brain[rows]], thresholds)
              for rows in (subjects == s for s in np.unique(subjects)) if tumour[rows][brain[rows]].any()]
    if not values:
        raise ValueError("the rectified ROC-AUC needs at least one subject with a tumour inside the brain")
    return {"rectified_auroc_mean": float(np.mean(values)), "rectified_auroc_std": float(np.std(values))}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean arrays; 1.0 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    denominator = prediction.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / denominator)


def dice_by_subject(prediction: np.ndarray, tumour: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """{subject: Dice of its binary ``prediction``}, for each subject with a tumour."""
    subjects = np.asarray(subjects)
    return {s: dice(prediction[rows], tumour[rows]) for s in np.unique(subjects)
            if tumour[rows := subjects == s].any()}


def dice_per_subject(prediction: np.ndarray, tumour: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """Dice of a binary ``prediction`` per subject with a tumour: mean and std across subjects."""
    values = list(dice_by_subject(prediction, tumour, subjects).values())
    if not values:
        raise ValueError("Dice needs at least one subject with a tumour")
    return {"dice_mean": float(np.mean(values)), "dice_std": float(np.std(values)), "dice_subjects": len(values)}


def best_dice(maps: np.ndarray, tumour: np.ndarray, brain: np.ndarray, subjects: np.ndarray, min_voxels: int,
              refine: int = 200) -> dict[str, float]:
    """The best mean Dice over tumour subjects that one threshold reaches, with the calibrated
    Dice's post-processing (components under ``min_voxels`` dropped, the brain only) and
    averaging (per subject with a tumour). It chooses the threshold with the test labels: an
    upper bound that peers report, never a result.

    Every distinct map value is tried as a threshold without the component removal (exact, by
    counting above each value); the ``refine`` best of them, and ``refine`` more spread over the
    distinct values, are then scored with it, and the best of those is the ceiling."""
    maps, tumour, brain, subjects = np.asarray(maps), np.asarray(tumour, bool), np.asarray(brain, bool), np.asarray(subjects)
    blocks = [rows for rows in subject_blocks(subjects) if tumour[rows].any()]
    if not blocks:
        raise ValueError("the best Dice needs at least one subject with a tumour")
    candidates = np.unique(maps[brain])
    exact = np.zeros(len(candidates))
    for rows in blocks:  # 2 TP / (|prediction| + |tumour|) at every candidate, from sorted values
        inside = maps[rows][brain[rows]]
        above = len(inside) - np.searchsorted(np.sort(inside), candidates, side="right")
        hits = tumour[rows][brain[rows]]
        true_above = hits.sum() - np.searchsorted(np.sort(inside[hits]), candidates, side="right")
        exact += 2 * true_above / (above + tumour[rows].sum())
    spread = candidates[np.linspace(0, len(candidates) - 1, min(refine, len(candidates))).astype(int)]
    tried = np.unique(np.concatenate([candidates[np.argsort(exact)[-refine:]], spread]))
    scores = [np.mean([dice(segment(maps[rows], t, min_voxels) & brain[rows], tumour[rows]) for rows in blocks]) for t in tried]
    best = int(np.argmax(scores))
    return {"best_dice_oracle": float(scores[best]), "best_dice_oracle_threshold": float(tried[best])}


def fold_metrics(scores: np.ndarray, labels: np.ndarray, healthy_scores: np.ndarray, folds: int = 5, seed: int = 0,
                 percentiles: np.ndarray | None = None) -> dict[str, float]:
    """The cross-validated slice protocol of dual-vae-latent-distance-improved.txt Table 1.

    The tumour-cohort slices are split into ``folds`` stratified folds; in turn, one fold (1/5 of
    the data) chooses the percentile of the healthy validation scores whose threshold maximises
    F1 on it, and the other folds are scored at that threshold: ROC-AUC, accuracy and F1, as mean
    and std over the folds. Empty when a class has fewer slices than folds."""
    from sklearn.model_selection import StratifiedKFold

    scores, labels = np.asarray(scores), np.asarray(labels, bool)
    if min(labels.sum(), (~labels).sum()) < folds:
        return {}
    thresholds = np.percentile(healthy_scores, np.arange(50.0, 100.0, 0.5) if percentiles is None else percentiles)
    results = []
    for rest, chosen in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(scores, labels):
        f1s = [f1_score(labels[chosen], scores[chosen] > t, zero_division=0) for t in thresholds]
        verdicts = scores[rest] > thresholds[int(np.argmax(f1s))]
        results.append((roc_auc_score(labels[rest], scores[rest]), accuracy_score(labels[rest], verdicts),
                        f1_score(labels[rest], verdicts, zero_division=0)))
    values = np.array(results)
    return {f"{name}_{stat}": float(f(values[:, i])) for i, name in enumerate(("auroc", "accuracy", "f1"))
            for stat, f in (("mean", np.mean), ("std", np.std))}


def fold_metrics_by_size(scores, tumour_pixels, lesion_pixels, healthy_scores, sizes: list[int], folds: int = 5,
                         seed: int = 0) -> dict[str, float]:
    """``fold_metrics`` for each T of ``sizes`` (keys ``cv_<metric>_t<T>``); slices with other
    lesions and no tumour above T are left out, as in ``slice_metrics_by_size``."""
    found = {}
    for size in sizes:
        labels, rated = slice_truth(tumour_pixels, lesion_pixels, size)
        metrics = fold_metrics(np.asarray(scores)[rated], labels[rated], healthy_scores, folds, seed)
        found |= {f"cv_{k}_t{size}": v for k, v in metrics.items()}
    return found
