"""The one-class novelty protocol: input checks with clear messages, and a run that can fail."""

import numpy as np
import pytest

from components.models.registry import build_detector
from components.novelty.oneclass import ImageSetError, digits, prepare, read_npz, run_protocol


def test_digits_are_real_images_scaled_and_resized():
    images, labels = digits()
    data = prepare(images, labels, 16, "digits")
    assert data.images.shape == (1797, 1, 16, 16) and data.images.dtype == np.float32
    assert data.images.min() == 0.0 and data.images.max() == 1.0 and set(labels) == set(range(10))


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 8)), np.zeros(4), "must be \\(N, H, W\\)"),
    (np.zeros((4, 8, 8)), np.zeros(3), "labels must be"),
    (np.full((4, 8, 8), np.nan), np.arange(4), "finite"),
    (np.zeros((4, 8, 8)), np.zeros(4), "at least two classes"),
])
def test_unusable_image_sets_are_named(images, labels, message):
    with pytest.raises(ImageSetError, match=message):
        prepare(images, labels, 16, "set")


def test_npz_errors(tmp_path):
    with pytest.raises(ImageSetError, match="no such file"):
        read_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 4, 4)))
    with pytest.raises(ImageSetError, match="missing \\['images', 'labels'\\]"):
        read_npz(tmp_path / "wrong.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageSetError, match="not a readable"):
        read_npz(tmp_path / "junk.npz")


def test_protocol_separates_two_easy_classes():
    rng = np.random.default_rng(0)
    bars = np.zeros((60, 8, 8))
    bars[:30, :, 3:5] = 1.0  # class 0: vertical bars
    bars[30:, 3:5, :] = 1.0  # class 1: horizontal bars
    images = bars + 0.05 * rng.standard_normal(bars.shape)
    data = prepare(images, np.repeat([0, 1], 30), 16, "bars")
    result = run_protocol(data, lambda: build_detector("dense_ae", base_channels=4, latent_size=4, downsamplings=2,
                                                       image_size=16), epochs=40, batch_size=8, learning_rate=3e-3)
    assert set(result["per_class"]) == {"0", "1"}
    assert result["mean"] > 0.9
