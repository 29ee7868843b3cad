"""The comparison tables: every paper's metric lands in its column, absent ones show '-'."""

from components.reports import tables
from components.reports.tables import lesion_kinds, markdown, pixel_table, score_table, slice_table

RESULTS = {
    "dual_vae": {
        "slice_auroc": 0.9, "slice_auprc": 0.8, "slice_accuracy": 0.85, "slice_f1": 0.7,
        "pixel_auroc": 0.95, "pixel_auprc": 0.4, "dice_mean": 0.3, "dice_std": 0.1, "best_dice_oracle": 0.5,
        "rectified_auroc_mean": 0.93, "rectified_auroc_std": 0.02, "inference_ms_per_slice": 8.94,
        "cv_auroc_mean_t20": 0.91, "cv_auroc_std_t20": 0.01, "cv_accuracy_mean_t20": 0.8, "cv_accuracy_std_t20": 0.02,
        "cv_f1_mean_t20": 0.7, "cv_f1_std_t20": 0.03,
        "other_lesion_slice_auroc": 0.7, "other_lesion_focus_slice_auroc": 0.6, "other_lesion_cavity_slice_auroc": 0.95,
        "alternative_scores": {"input_l2": {"slice_auroc": 0.97, "cv_auroc_mean_t20": 0.96, "cv_auroc_std_t20": 0.01}},
    },
    "dense_ae": {"slice_auroc": 0.8, "dice_mean": 0.1, "dice_std": 0.05},
}


def test_slice_table_has_each_score_and_its_alternatives_per_t():
    table = slice_table(RESULTS, [20])
    assert list(table["method"]) == ["dual_vae", "dual_vae (input_l2)", "dense_ae"]
    assert list(table["ROC-AUC"]) == ["0.910 ± 0.010", "0.960 ± 0.010", "-"]
    assert table["F1"][0] == "0.700 ± 0.030"


def test_pixel_table_reports_the_rectified_auroc_and_labels_the_oracle():
    table = pixel_table(RESULTS).set_index("detector")
    assert table.loc["dual_vae", "rectified AUROC"] == "0.930 ± 0.020"
    assert table.loc["dense_ae", "rectified AUROC"] == "-"
    assert table.loc["dual_vae", "best Dice (oracle)"] == "0.500"
    assert table.loc["dual_vae", "ms / slice"] == "8.9"


def test_each_other_lesion_kind_gets_a_column():
    assert lesion_kinds(RESULTS) == ["cavity", "focus"]
    table = tables.test_split_table(RESULTS).set_index("detector")
    assert (table.loc["dual_vae", "focus AUROC"], table.loc["dual_vae", "cavity AUROC"]) == ("0.600", "0.950")
    assert table.loc["dense_ae", "focus AUROC"] == "-"


def test_score_table_sets_a_score_beside_its_papers_baseline_only():
    table = score_table(RESULTS)
    assert list(table["score"]) == ["dual_vae", "dual_vae (input_l2)"]
    assert "### Pixel-wise" in markdown(RESULTS, [20])
