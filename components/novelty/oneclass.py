"""The one-class novelty protocol of Wang et al., "Brain Tumor Anomaly Detection via Latent
Regularized Adversarial Network" (2020; its Table 1, after Ruff et al. and Perera et al.): for
each class in turn, a detector is trained on that class's training images only, and every test
image is scored; the other classes are the anomalies. AUROC per class, and their mean.

Any image set works: an ``.npz`` with ``images`` (N, H, W) and ``labels`` (N,). The default is
scikit-learn's handwritten digits (1,797 real 8 x 8 scans of digits 0-9, shipped with the
package), enlarged to ``size`` px. Images are scaled to [0, 1] by the set's min and max.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.ndimage import zoom
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from components.models.detector import Detector, Slices


class ImageSetError(ValueError):
    """An image set that cannot be used, with what is wrong with it."""


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, 1, size, size) float32 in [0, 1]
    labels: np.ndarray  # (N,)
    name: str


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ImageSetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise ImageSetError(f"{path}: needs arrays 'images' (N, H, W) and 'labels' (N,); missing {sorted(missing)}")
            return archive["images"], archive["labels"]
    except (OSError, ValueError) as err:
        if isinstance(err, ImageSetError):
            raise
        raise ImageSetError(f"{path}: not a readable .npz archive ({err})") from None


def prepare(images: np.ndarray, labels: np.ndarray, size: int, name: str) -> ImageSet:
    """Checked, scaled to [0, 1] and resized to ``size`` x ``size``."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3:
        raise ImageSetError(f"{name}: images must be (N, H, W), got shape {images.shape}")
    if labels.shape != (len(images),):
        raise ImageSetError(f"{name}: labels must be (N,) = ({len(images)},), got shape {labels.shape}")
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise ImageSetError(f"{name}: images must be finite numbers (found NaN/inf or a non-numeric dtype)")
    if len(np.unique(labels)) < 2:
        raise ImageSetError(f"{name}: needs at least two classes, found {np.unique(labels).tolist()}")
    low, high = float(images.min()), float(images.max())
    scaled = (images.astype(np.float32) - low) / max(high - low, 1e-12)
    factors = (1, size / images.shape[1], size / images.shape[2])
    resized = np.clip(zoom(scaled, factors, order=1), 0.0, 1.0).astype(np.float32)
    return ImageSet(resized[:, None], labels, name)


def train_one_class(detector: Detector, images: np.ndarray, epochs: int, batch_size: int, learning_rate: float,
                    seed: int) -> None:
    """A plain training loop through the detector interface (the whole image is the 'brain')."""
    generator = torch.Generator().manual_seed(seed)
    optimizers = detector.make_optimizers(learning_rate)
    x_all = torch.from_numpy(images)
    unlabelled = Slices(x_all, torch.ones_like(x_all, dtype=torch.bool))  # for a dual VAE: the same class
    detector.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size) or [0]:
            x = x_all[order[start : start + batch_size]]
            detector.train_step(Slices(x, torch.ones_like(x, dtype=torch.bool), unlabelled), optimizers)


def run_protocol(data: ImageSet, build: Callable[[], Detector], epochs: int, batch_size: int, learning_rate: float,
                 test_fraction: float = 0.3, seed: int = 0) -> dict:
    """AUROC per normal class (anomalies: every other class) on a stratified test split, and the mean."""
    train_x, test_x, train_y, test_y = train_test_split(data.images, data.labels, test_size=test_fraction,
                                                        stratify=data.labels, random_state=seed)
    test_brain = torch.ones(test_x.shape, dtype=torch.bool)
    per_class = {}
    for normal in np.unique(data.labels):
        torch.manual_seed(seed)
        detector = build()
        train_one_class(detector, train_x[train_y == normal], epochs, batch_size, learning_rate, seed)
        detector.eval()
        scores = torch.cat([detector.inspect(x, m).scores for x, m in
                            zip(torch.from_numpy(test_x).split(256), test_brain.split(256))]).numpy()
        per_class[str(normal)] = float(roc_auc_score(test_y != normal, scores))
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values())))}
