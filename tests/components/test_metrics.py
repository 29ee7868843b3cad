import numpy as np
import pytest
import torch

from components.metrics.detection import (
    dice, dice_per_subject, fold_metrics, fold_metrics_by_size, pixel_metrics, rectified_auroc, rectified_auroc_per_subject,
    roc_table, slice_labels, slice_metrics,
)
from components.models.autoencoders import SpatialAE
from components.scoring.volume import volume_score


def test_dice_hand_worked():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert dice(a, b) == pytest.approx(0.5)  # 2*1 / (2+2)
    assert dice(a, a) == 1.0 and dice(np.zeros(4), np.zeros(4)) == 1.0 and dice(a, ~a) == 0.0


def test_slice_metrics_hand_worked():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1], bool)
    m = slice_metrics(scores, labels, threshold=0.3)
    assert m["slice_auroc"] == pytest.approx(0.75)  # 3 of 4 (abnormal, normal) pairs ordered
    assert m["slice_accuracy"] == pytest.approx(0.75)  # verdicts 0,1,1,1
    assert m["slice_f1"] == pytest.approx(0.8)  # tp=2 fp=1 fn=0
    assert m["slice_auprc"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert (m["slices_abnormal"], m["slices_normal"]) == (2, 2)


def test_slice_labels_use_strict_threshold():
    np.testing.assert_array_equal(slice_labels(np.array([0, 20, 21]), 20), [False, False, True])


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="both normal and abnormal"):
        slice_metrics(np.array([0.1, 0.2]), np.array([True, True]), 0.5)


def test_pixel_metrics_only_count_the_brain():
    maps = np.array([[[[0.9, 0.1], [0.2, 5.0]]]])
    tumour = np.array([[[[1, 0], [0, 0]]]], bool)
    brain = np.array([[[[1, 1], [1, 0]]]], bool)  # the 5.0 outside the brain must not count
    assert pixel_metrics(maps, tumour, brain)["pixel_auroc"] == pytest.approx(1.0)


def test_dice_per_subject_skips_tumour_free_subjects():
    prediction = np.array([[[[1, 0]]], [[[1, 1]]], [[[0, 0]]]], bool)
    tumour = np.array([[[[1, 0]]], [[[1, 0]]], [[[0, 0]]]], bool)
    out = dice_per_subject(prediction, tumour, np.array(["a", "b", "c"]))
    assert out["dice_subjects"] == 2
    assert out["dice_mean"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_slice_scores_read_lesion_sized_blobs_not_pixels_or_the_rim():
    """The default slice score: the brightest 2 % of the 5 x 5 median-filtered map in the eroded brain."""
    brain = torch.zeros(3, 1, 40, 40, dtype=torch.bool)
    brain[..., 5:35, 5:35] = True  # 900 px, 784 inside the rim: the top 16 px are read
    maps = torch.zeros(3, 1, 40, 40)
    maps[0, 0, 20, 20] = maps[0, 0, 10, 30] = 5.0  # speckle: gone after the median filter
    maps[1, 0, 15:21, 15:21] = 1.0  # a 6 x 6 blob: its 16 inner pixels survive the filter
    maps[2, 0, 5, 5:35] = 9.0  # the brain's rim: not read
    maps[2, 0, 0:5, :] = 9.0  # outside the brain: not read
    scores = SpatialAE().slice_score(maps, maps, brain)
    torch.testing.assert_close(scores, torch.tensor([0.0, 1.0, 0.0]))
    assert SpatialAE().alternative_scores(maps, maps * brain, brain)["map_mean"][1] == pytest.approx(36 / 900)
    assert volume_score(np.array([0.1, 0.7, 0.2])) == 0.7


def test_roc_table_is_thinned_and_monotone():
    rng = np.random.default_rng(0)
    table = roc_table(rng.random(1000), rng.random(1000) > 0.5, max_points=50)
    assert len(table) <= 50 and table["fpr"].is_monotonic_increasing
    assert table["fpr"].iloc[0] == 0.0 and table["tpr"].iloc[-1] == 1.0


def test_other_lesions_are_scored_against_clean_slices_only():
    from components.metrics.detection import other_lesion_metrics

    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.95, 0.15])
    tumour = np.array([0, 0, 0, 0, 50, 0])  # slice 4 has a tumour: left out
    lesion = np.array([0, 0, 3, 0, 4, 2])
    found = other_lesion_metrics(scores, tumour, lesion, threshold=0.5)
    # lesion-only slices 2 (0.9) and 5 (0.15) against clean slices 0, 1, 3 (0.1, 0.2, 0.8)
    assert found == {"other_lesion_slice_auroc": pytest.approx(4 / 6), "other_lesion_sensitivity": 0.5, "other_lesion_slices": 2}
    assert other_lesion_metrics(scores, tumour, np.zeros(6), 0.5) == {}


def test_each_lesion_kind_is_scored_on_its_own():
    import pandas as pd

    from components.metrics.detection import lesion_kind_metrics

    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.95, 0.15])
    index = pd.DataFrame({"tumour_pixels": [0, 0, 0, 0, 50, 0], "lesion_pixels": [0, 0, 3, 0, 4, 2],
                          "lesion_pixels_1": [0, 0, 3, 0, 4, 0], "lesion_pixels_2": [0, 0, 0, 0, 0, 2]})
    found = lesion_kind_metrics(scores, index, 0.5, {1: "focus", 2: "cavity", 3: "absent"})
    # focus: slice 2 (0.9) beats all three clean slices; cavity: slice 5 (0.15) beats one of them
    assert found["other_lesion_focus_slice_auroc"] == 1.0 and found["other_lesion_focus_slices"] == 1
    assert found["other_lesion_cavity_slice_auroc"] == pytest.approx(1 / 3)
    assert found["other_lesion_cavity_sensitivity"] == 0.0
    assert not any("absent" in key for key in found)


def test_median_filter_removes_a_lone_hot_voxel_and_keeps_a_blob():
    from components.metrics.postprocess import smooth_subject

    maps = np.zeros((9, 1, 12, 12), np.float32)
    maps[4, 0, 2, 2] = 5.0  # a single hot voxel: noise
    maps[2:7, 0, 5:10, 5:10] = 1.0  # a 5x5x5 block: a lesion
    brain = np.ones_like(maps, bool)
    out = smooth_subject(maps, brain, 5)
    assert out[4, 0, 2, 2] == 0.0 and out[4, 0, 7, 7] == 1.0
    assert out[:, 0, 0, :].max() == 0.0  # the eroded brain's rim is zeroed


def test_the_median_window_decides_the_smallest_lesion_a_map_keeps():
    """A 3 x 3 x 3 voxel lesion (8 mm across at 64 px) fills a 3-voxel window and is 27 of the
    125 voxels of the paper's 5-voxel one, whose median erases it; 1 voxel filters nothing."""
    from components.metrics.postprocess import smooth_subject

    maps = np.zeros((9, 1, 12, 12), np.float32)
    maps[3:6, 0, 4:7, 4:7] = 1.0
    brain = np.ones_like(maps, bool)
    assert smooth_subject(maps, brain, 3)[4, 0, 5, 5] == 1.0
    assert smooth_subject(maps, brain, 5).max() == 0.0
    np.testing.assert_array_equal(smooth_subject(maps, brain, 1)[:, :, 1:-1, 1:-1], maps[:, :, 1:-1, 1:-1])


@pytest.mark.parametrize(("median", "spacing_mm", "window"), [
    (3, None, (3, 3, 3)),          # spacing unknown: cubic, as before it was recorded
    (3, (2.0, 2.7), (3, 3, 3)),    # 2 mm slices: 6 mm through-plane, 8 mm in-plane
    (3, (1.0, 2.7), (3, 3, 3)),    # never more slices than pixels
    (3, (6.0, 2.7), (1, 3, 3)),    # 6 mm slices: one slice (three would span 18 mm)
    (5, (2.0, 2.7), (5, 5, 5)),
    (5, (4.0, 2.7), (3, 5, 5)),    # 13.5 mm in-plane: three 4 mm slices, not an even four
    (1, (6.0, 2.7), (1, 1, 1)),
])
def test_the_median_spans_no_more_millimetres_through_plane_than_in_plane(median, spacing_mm, window):
    from components.metrics.postprocess import median_window

    assert median_window(median, spacing_mm) == window


def test_a_lesion_on_one_thick_slice_survives_the_median():
    """On 6 mm slices a tumour of one slice is a tumour; a median over three slices (18 mm) erased it."""
    from components.metrics.postprocess import smooth_subject

    maps = np.zeros((9, 1, 12, 12), np.float32)
    maps[4, 0, 4:8, 4:8] = 1.0
    brain = np.ones_like(maps, bool)
    assert smooth_subject(maps, brain, 3).max() == 0.0
    assert smooth_subject(maps, brain, 3, (6.0, 2.7))[4, 0, 5:7, 5:7].min() == 1.0
    np.testing.assert_array_equal(smooth_subject(maps, brain, 3, (2.0, 2.7)), smooth_subject(maps, brain, 3))


def test_small_components_are_dropped_in_3d():
    from components.metrics.postprocess import segment

    maps = np.zeros((5, 1, 8, 8))
    maps[1, 0, 1, 1] = 1.0  # 1 voxel
    maps[1:3, 0, 4:6, 4:6] = 1.0  # 8 voxels, connected across slices
    out = segment(maps, threshold=0.5, min_voxels=6)
    assert not out[1, 0, 1, 1] and out[1:3, 0, 4:6, 4:6].all() and out.sum() == 8


def test_subject_blocks_keep_order():
    from components.metrics.postprocess import subject_blocks

    blocks = subject_blocks(np.array(["b", "b", "a", "a", "a", "c"]))
    assert [list(b) for b in blocks] == [[0, 1], [2, 3, 4], [5]]


def test_best_dice_of_a_small_separable_tumour_is_one():
    """A tumour of 0.13 % of the brain, every voxel of it above every other but one isolated speck
    (dropped with the small components, as the calibrated Dice drops it), and a healthy subject
    whose bright block counts for nobody: the ceiling is a perfect 1.0."""
    from components.metrics.detection import best_dice

    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 0.5, (40, 1, 32, 32)).astype(np.float32)
    tumour = np.zeros(maps.shape, bool)
    tumour[8:11, 0, 10:13, 10:13] = True
    maps[tumour] = rng.uniform(0.6, 0.7, tumour.sum())
    maps[15, 0, 25, 25] = 0.95  # one voxel: a component of 1 < 6
    maps[30:34, 0, 5:9, 5:9] = 0.9  # the healthy subject's bright block
    subjects = np.repeat(["tumour", "healthy"], 20)
    found = best_dice(maps, tumour, np.ones_like(tumour), subjects, min_voxels=6)
    assert found["best_dice_oracle"] == 1.0 and 0.49 < found["best_dice_oracle_threshold"] < 0.6  # above the background


def test_slice_metrics_for_each_tumour_size_leave_out_other_lesions():
    from components.metrics.detection import slice_metrics_by_size

    scores = np.array([0.1, 0.2, 0.6, 0.9, 0.95, 0.5])
    tumour = np.array([0, 0, 10, 60, 200, 0])
    lesion = np.array([0, 0, 0, 0, 0, 5])  # the last slice: another lesion, never rated
    found = slice_metrics_by_size(scores, tumour, lesion, [0, 50, 150, 500], threshold=0.55)
    assert found["slice_auroc_t0"] == 1.0 and found["slice_auroc_t50"] == 1.0
    # T = 50: slices 3, 4 abnormal; 0, 1, 2 normal; slice 2 (0.6) is a false positive at 0.55
    assert found["slice_accuracy_t50"] == pytest.approx(4 / 5) and found["slice_f1_t50"] == pytest.approx(0.8)
    assert "slice_auroc_t150" in found and not any(k.endswith("_t500") for k in found)  # no slice above 500


def test_cross_validated_protocol_on_separable_and_on_random_scores():
    labels = np.r_[np.ones(10), np.zeros(20)].astype(bool)
    healthy = np.linspace(0.0, 1.0, 101)  # percentile p of these is p / 100
    separable = np.where(labels, 2.0, 0.2)  # any percentile from 20 to 99.5 separates the classes
    perfect = fold_metrics(separable, labels, healthy)
    assert perfect == {"auroc_mean": 1.0, "auroc_std": 0.0, "accuracy_mean": 1.0, "accuracy_std": 0.0,
                       "f1_mean": 1.0, "f1_std": 0.0}
    # Everything above every threshold: F1 is 2 * 8 / (2 * 8 + 16) on each 4/5 split, accuracy 1/3.
    flat = fold_metrics(np.full(30, 5.0), labels, healthy)
    assert flat["auroc_mean"] == 0.5 and flat["accuracy_mean"] == pytest.approx(1 / 3)
    assert flat["f1_mean"] == pytest.approx(0.5)
    assert fold_metrics(separable[:24], labels[:24], healthy, folds=5) != {}
    assert fold_metrics(separable[6:], labels[6:], healthy, folds=5) == {}  # 4 abnormal slices < 5 folds


def test_cross_validated_protocol_by_tumour_size_names_each_t():
    pixels = np.r_[np.full(10, 100), np.full(10, 30), np.zeros(20)]
    found = fold_metrics_by_size(np.r_[np.full(20, 2.0), np.full(20, 0.2)], pixels, np.zeros(40), np.linspace(0, 1, 101), [0, 50])
    assert found["cv_auroc_mean_t0"] == 1.0
    assert found["cv_auroc_mean_t50"] < 1.0  # the 30-pixel slices count as normal at T = 50


def test_rectified_auroc_hand_worked():
    # Tumour voxels 3 and 1, healthy 0 and 2: of the four (tumour, healthy) pairs three are
    # ordered, so the exact AUC is 0.75; 1000 evenly spaced cuts resolve every value here.
    maps, truth = np.array([0.0, 1.0, 2.0, 3.0]), np.array([False, True, False, True])
    assert rectified_auroc(maps, truth) == pytest.approx(0.75, abs=1e-9)
    # Two operating points only: the cuts at min and max leave a coarser curve,
    # (1,1) -> (1,1) -> (0, 0.5) -> (0,0): area 0.75 as well by trapezoids of (1 + 0.5) / 2.
    assert rectified_auroc(maps, truth, thresholds=2) == pytest.approx(0.75)
    assert rectified_auroc(np.array([0.0, 0.0, 5.0, 6.0]), np.array([False, False, True, True])) == pytest.approx(1.0)


def test_rectified_auroc_counts_the_brain_per_subject():
    maps = np.array([[[[0.9, 0.1], [0.2, 5.0]]], [[[0.1, 0.8], [0.3, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    tumour = np.array([[[[1, 0], [0, 0]]], [[[0, 0], [1, 0]]], [[[0, 0], [0, 0]]]], bool)
    brain = np.array([[[[1, 1], [1, 0]]], [[[1, 1], [1, 1]]], [[[1, 1], [1, 1]]]], bool)
    out = rectified_auroc_per_subject(maps, tumour, brain, np.array(["a", "b", "c"]))
    # a: the tumour voxel is the brain's brightest (the 5.0 lies outside it): 1.0. b: the tumour
    # (0.3) beats 0.1 and 0.0, loses to 0.8: 2/3. c has no tumour and is left out.
    assert out["rectified_auroc_mean"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-3)
    assert out["rectified_auroc_std"] == pytest.approx((1.0 - 2 / 3) / 2, abs=1e-3)
    with pytest.raises(ValueError, match="at least one subject with a tumour"):
        rectified_auroc_per_subject(maps[2:], tumour[2:], brain[2:], np.array(["c"]))
