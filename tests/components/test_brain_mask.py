import numpy as np

from components.preprocess.brain_mask import brain_mask, is_skull_stripped, otsu_head_mask


def head(shape=(40, 40, 40), noise=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball (the head) with a dark hole (a ventricle) in a noisy, non-zero background."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    radius = np.sqrt((grid**2).sum(axis=0))
    truth = radius < 14
    image = np.where(truth, 1.0, 0.0) + noise * np.abs(rng.standard_normal(shape)) + 0.01
    image[radius < 3] = 0.05  # dark inside: must be filled back in
    return image.astype(np.float32), truth


def test_otsu_mask_finds_the_head_and_fills_holes():
    image, truth = head()
    assert not is_skull_stripped(image)
    mask = otsu_head_mask(image)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95 and mask[20, 20, 20]


def test_skull_stripped_images_use_their_non_zero_voxels():
    image, truth = head()
    stripped = np.where(truth, image, 0.0)
    assert is_skull_stripped(stripped)
    np.testing.assert_array_equal(brain_mask(stripped), stripped > 0)


def test_a_given_mask_wins():
    image, truth = head()
    np.testing.assert_array_equal(brain_mask(image, truth.astype(np.uint8)), truth)
