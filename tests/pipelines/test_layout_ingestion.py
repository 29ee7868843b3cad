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


def as_ixi_with_labels(hcp, root):
    """As NiChart redistributes IXI: the head in images/, a brain parcellation in brain-labels/."""
    for i, subject in enumerate(read_hcp(hcp)):
        stem = f"IXI{i:03d}-HH-{1000 + i:04d}"
        unstripped(subject.image, root / "images" / f"{stem}_T2.nii.gz", i)
        mask, affine = load_volume(subject.brain_mask)
        labels = np.where(mask > 0, 1 + np.arange(mask.size).reshape(mask.shape) % 7, 0).astype(np.uint8)
        save_volume(labels, affine, root / "brain-labels" / f"{stem}_T2_DLMUSE.nii.gz")


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
    ("ixi", as_ixi, "healthy"), ("ixi", as_ixi_with_labels, "healthy"), ("bids", as_bids, "healthy"),
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


def test_an_ixi_label_map_is_the_brain_mask(phantom_roots, tmp_path):
    """With a label map beside each unstripped image, the brain kept is exactly the one the same
    subjects' HCP brain masks give; without it, it is Otsu's guess at the head, another one."""
    hcp, brats = phantom_roots
    as_ixi_with_labels(hcp, tmp_path / "ixi")
    as_ixi(hcp, tmp_path / "ixi_head")
    brain_pixels = {}
    for name, root in (("hcp", hcp), ("ixi", tmp_path / "ixi"), ("ixi_head", tmp_path / "ixi_head")):
        (tmp_path / name).mkdir(exist_ok=True)
        params = load_params(write_params(tmp_path / name, data={"healthy_root": str(root), "tumour_root": str(brats)}))
        preprocess.run(params)
        index = pd.read_parquet(tmp_path / name / "data" / "processed" / "index.parquet")
        brain_pixels[name] = index[index["cohort"] == "healthy"]["brain_pixels"].sum()
    assert brain_pixels["ixi"] == brain_pixels["hcp"] != brain_pixels["ixi_head"]


def test_brats2018_t1_ingests(phantom_roots, tmp_path):
    """BraTS 2018's naming (Brats18_*, in HGG/ and LGG/) read for the T1 modality, healthy HCP T1 beside it."""
    hcp, brats = phantom_roots
    root = tmp_path / "brats"
    for i, subject in enumerate(read_brats(brats)):
        case = f"Brats18_CBICA_A{i:02d}_1"
        (root / ("HGG" if i % 2 else "LGG") / case).mkdir(parents=True)
        for part in ("t1", "seg"):
            shutil.copy(subject.image.parent / f"{subject.subject_id}_{part}.nii.gz",
                        root / ("HGG" if i % 2 else "LGG") / case / f"{case}_{part}.nii.gz")
    params = load_params(write_params(tmp_path, data={"healthy_root": str(hcp), "tumour_root": str(root), "modality": "t1"}))
    report = preprocess.run(params)
    assert report["processed"] == report["volumes"] == len(read_hcp(hcp)) + len(read_brats(brats))
    volumes = pd.read_parquet(tmp_path / "data" / "processed" / "volumes.parquet")
    tumour = volumes[volumes["cohort"] == "tumour"]
    assert set(tumour["subject"]) == {f"Brats18_CBICA_A{i:02d}_1" for i in range(len(tumour))}
    assert all(set(labels) <= {0, 1, 2, 4} for labels in tumour["seg_labels"])
