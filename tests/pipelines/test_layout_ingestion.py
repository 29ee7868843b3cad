"""Each supported layout ingests through the preprocess stage with one param change: the
phantom subjects, rewritten in that layout's own folder and file names."""

import shutil

import numpy as np
import pandas as pd
import pytest

from components.data.layouts import read_brats, read_hcp
from components.data.nifti_io import load_volume, save_volume
from pipelines import preprocess
from pipelines.params import load_params
from tests.conftest import write_params


def unstripped(path, target, seed):
    """A head scan as IXI and BIDS ship it: a noisy background instead of exact zeros."""
    image, affine = load_volume(path)
    noise = np.abs(np.random.default_rng(seed).normal(0, 0.02 * image.max(), image.shape))
    save_volume((image + noise).astype(np.float32), affine, target)


def as_ixi(hcp, root):
    for i, subject in enumerate(read_hcp(hcp)):
        unstripped(subject.image, root / f"IXI{i:03d}-Guys-{1000 + i:04d}-T2.nii.gz", i)


def as_bids(hcp, root):
    for i, subject in enumerate(read_hcp(hcp)):
        session = f"sub-{i:02d}/ses-1/anat" if i % 2 else f"sub-{i:02d}/anat"
        stem = f"sub-{i:02d}_ses-1" if i % 2 else f"sub-{i:02d}"
        unstripped(subject.image, root / session / f"{stem}_T2w.nii.gz", i)


def as_brats2023(brats, root):
    for i, subject in enumerate(read_brats(brats)):
        case = f"BraTS-GLI-{i:05d}-000"
        for old, new in (("t2", "t2w"), ("seg", "seg")):
            (root / case).mkdir(parents=True, exist_ok=True)
            shutil.copy(subject.image.parent / f"{subject.subject_id}_{old}.nii.gz", root / case / f"{case}-{new}.nii.gz")


def as_brats2018(brats, root):
    for i, subject in enumerate(read_brats(brats)):
        case = f"Brats18_TCIA{i:02d}_1"
        for part in ("t2", "seg"):
            target = root / ("HGG" if i % 2 else "LGG") / case / f"{case}_{part}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(subject.image.parent / f"{subject.subject_id}_{part}.nii.gz", target)


@pytest.mark.parametrize("layout, writer, cohort", [
    ("ixi", as_ixi, "healthy"), ("bids", as_bids, "healthy"),
    ("brats2023", as_brats2023, "tumour"), ("brats", as_brats2018, "tumour"),
])
def test_layout_ingests_with_one_param_change(phantom_roots, tmp_path, layout, writer, cohort):
    hcp, brats = phantom_roots
    root = tmp_path / layout
    writer(hcp if cohort == "healthy" else brats, root)
    data = {"healthy_root": str(root if cohort == "healthy" else hcp), "tumour_root": str(root if cohort == "tumour" else brats)}
    report = preprocess.run(load_params(write_params(tmp_path, data=data)))
    assert report["processed"] == report["volumes"] and not report["skipped"]
    index = pd.read_parquet(tmp_path / "data" / "processed" / "index.parquet")
    ours = index[index["cohort"] == cohort]
    expected = len(read_hcp(hcp)) if cohort == "healthy" else len(read_brats(brats))
    assert set(ours["dataset"]) == {layout} and ours["subject"].nunique() == expected
    if cohort == "tumour":
        assert (ours["tumour_pixels"] > 0).any()
