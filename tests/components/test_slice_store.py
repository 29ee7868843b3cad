"""The slice index: lesion kinds become columns, zero for subjects without that kind."""

import pandas as pd

from components.data.slice_store import INDEX_COLUMNS, read_index, slice_spacing, write_index


def rows(subject: str, **kinds) -> pd.DataFrame:
    base = {c: 0 for c in INDEX_COLUMNS} | {"subject": subject, "dataset": "brats", "cohort": "tumour", "split": "test",
                                           "shard": f"{subject}.npz"}
    return pd.DataFrame([base | kinds])


def test_lesion_kind_columns_are_kept_in_order_and_zero_filled(tmp_path):
    index = pd.concat([rows("a", lesion_pixels_2=5), rows("b", lesion_pixels_10=1, lesion_pixels_1=3), rows("c")])
    write_index(tmp_path, index)
    stored = read_index(tmp_path)
    assert list(stored.columns) == [*INDEX_COLUMNS, "lesion_pixels_1", "lesion_pixels_2", "lesion_pixels_10"]
    assert stored["lesion_pixels_2"].tolist() == [5, 0, 0] and stored["lesion_pixels_1"].dtype == "int64"


def test_the_slice_spacing_is_read_back_and_absent_from_older_indexes(tmp_path):
    index = pd.concat([rows("a", slice_mm=6.0, pixel_mm=2.5), rows("b", slice_mm=2.0, pixel_mm=2.7)])
    write_index(tmp_path, index)
    assert slice_spacing(read_index(tmp_path)).tolist() == [[6.0, 2.5], [2.0, 2.7]]
    assert slice_spacing(index.drop(columns=["slice_mm", "pixel_mm"])) is None
