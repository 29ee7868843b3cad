import numpy as np
import pytest

from components.preprocess.brain_mask import brain_mask, extract_brain, is_skull_stripped, otsu_head_mask
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import prepare_volume


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


def skull_on_head(spacing=(1.0, 1.0, 1.0), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A brain (a bright 25 mm ball with a darker core), a dark 6 mm skull, a bright 5 mm scalp,
    a noisy background: the brain is the truth, on a grid of ``spacing`` mm."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(96 / s)) for s in spacing)
    grid = np.indices(shape) * np.array(spacing)[:, None, None, None] - 48.0
    radius = np.sqrt((grid**2).sum(axis=0))
    brain = radius < 25
    image = np.select([radius < 8, brain, radius < 31, radius < 36], [0.6, 1.0, 0.05, 0.9], 0.02)
    return (image + 0.03 * np.abs(rng.standard_normal(shape))).astype(np.float32), brain


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 5.0)], ids=["isotropic", "thick slices"])
def test_the_brain_of_a_skull_on_scan_is_extracted_without_its_scalp(spacing):
    image, truth = skull_on_head(spacing)
    mask = extract_brain(image, spacing)
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.95
    scalp = ~truth & (image > 0.5)
    assert not (mask & scalp).any()


def test_the_recipe_strips_a_skull_on_scan_unless_told_not_to():
    image, truth = skull_on_head()
    np.testing.assert_array_equal(brain_mask(image), extract_brain(image, (1.0, 1.0, 1.0)))
    head = brain_mask(image, skull_strip=False)
    np.testing.assert_array_equal(head, otsu_head_mask(image))
    assert head[~truth & (image > 0.5)].all()  # the scalp stays in


def test_a_head_with_a_zeroed_background_is_not_taken_for_a_stripped_brain():
    image, truth = head()
    zeroed = np.where(truth, image, 0.0)  # IXI as NiChart distributes it: the background set to 0
    assert np.mean(zeroed == 0) > 0.1
    assert not is_skull_stripped(zeroed, (8.0, 8.0, 8.0))  # at 8 mm, 6 litres: a head
    assert is_skull_stripped(zeroed, (1.0, 1.0, 1.0))  # at 1 mm, 11 ml: no bigger than a brain


def test_a_head_too_small_to_erode_keeps_its_head_mask():
    image, _ = head(shape=(12, 12, 12))
    np.testing.assert_array_equal(extract_brain(image, (1.0, 1.0, 1.0)), otsu_head_mask(image))


def test_a_recipe_recorded_before_skull_stripping_existed_strips_skull_on_uploads():
    """A registered model's spec JSON without the key replays today's recipe: the brain, not the head."""
    image, truth = skull_on_head()
    old = PreprocessSpec.from_dict({"size": 32})
    prepared = prepare_volume(image, np.eye(4), old)
    assert old.skull_strip and 2 * (prepared.brain & truth).sum() / (prepared.brain.sum() + truth.sum()) > 0.95
    head = prepare_volume(image, np.eye(4), PreprocessSpec(size=32, skull_strip=False)).brain
    assert head.sum() > 1.5 * truth.sum()
