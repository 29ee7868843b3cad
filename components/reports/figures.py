"""The papers' figures: ROC and precision-recall curves, score histograms of healthy vs tumour
slices, and a grid of input / reconstruction / anomaly map / ground truth for a few slices."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from components.atomic import atomic_path  # noqa: E402


def curves(scores: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    """ROC and precision-recall side by side, one line per named score."""
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(labels, values)
        precision, recall, _ = precision_recall_curve(labels, values)
        roc.plot(fpr, tpr, label=name)
        pr.plot(recall, precision, label=name)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="Slice-wise ROC")
    pr.set(xlabel="recall", ylabel="precision", title="Slice-wise precision-recall")
    roc.legend(fontsize=8)
    _save(figure, path)


def histograms(healthy: np.ndarray, tumour: np.ndarray, threshold: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(np.concatenate([healthy, tumour]), bins=40)
    axis.hist(healthy, bins=bins, alpha=0.6, density=True, label=f"no tumour ({len(healthy)})")
    axis.hist(tumour, bins=bins, alpha=0.6, density=True, label=f"tumour ({len(tumour)})")
    axis.axvline(threshold, color="black", linestyle="--", label="threshold")
    axis.set(xlabel="slice score", ylabel="density", title="Slice scores, test split")
    axis.legend(fontsize=8)
    _save(figure, path)


def example_grid(images: np.ndarray, reconstructions: np.ndarray, maps: np.ndarray, truth: np.ndarray, path: Path) -> None:
    """One row per slice: input, reconstruction, anomaly map, ground truth; arrays (N, 1, H, W)."""
    rows = len(images)
    figure, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows), squeeze=False)
    for row in range(rows):
        panels = (images[row, 0], reconstructions[row, 0], maps[row, 0], truth[row, 0])
        for column, (panel, title) in enumerate(zip(panels, ("input", "reconstruction", "anomaly map", "ground truth"))):
            axes[row, column].imshow(panel, cmap="inferno" if column == 2 else "gray")
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(title, fontsize=9)
    _save(figure, path)


def overlay_strip(images: np.ndarray, maps: np.ndarray, titles: list[str], threshold: float) -> bytes:
    """A quick look as PNG bytes: each (H, W) slice in grey with its anomaly map over it where
    the map passes ``threshold``; slices shown in RAS radiological view (rows = anterior up)."""
    figure, axes = plt.subplots(1, len(images), figsize=(2.4 * len(images), 2.7), squeeze=False)
    top = float(maps.max()) or 1.0
    for axis, image, heat, title in zip(axes[0], images, maps, titles):
        axis.imshow(np.rot90(image), cmap="gray")
        axis.imshow(np.rot90(np.ma.masked_less_equal(heat, threshold)), cmap="inferno", vmin=threshold, vmax=top, alpha=0.7)
        axis.set_title(title, fontsize=8)
        axis.set_axis_off()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
