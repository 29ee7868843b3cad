"""Every supported layout, as tiny fixtures written in the releases' own folder and file names."""

import json
from pathlib import Path

import numpy as np
import pytest

from components.data.layouts import LayoutError, detect_layout, read_dataset
from components.data.nifti_io import save_volume


def volume(path: Path, labels: bool = False) -> None:
    data = (np.arange(512).reshape(8, 8, 8) % 5).astype(np.uint8 if labels else np.float32)
    save_volume(data, np.eye(4), path)


def write_files(root: Path, names: list[str]) -> Path:
    for name in names:
        volume(root / name, labels=any(word in name for word in ("seg", "mask", "DLMUSE")))
    return root


def brats_case(case: str, suffixes=("t1", "t1ce", "t2", "flair", "seg"), sep="_", ext=".nii.gz") -> list[str]:
    return [f"{case}/{case}{sep}{s}{ext}" for s in suffixes]


FIXTURES = {
    "hcp": (["100307/T1w/T2w_acpc_dc_restore_brain.nii.gz", "100307/T1w/T1w_acpc_dc_restore_brain.nii.gz",
             "100307/T1w/brainmask_fs.nii.gz"], ["100307"]),
    "brats2018": ([f"HGG/{f}" for f in brats_case("Brats18_2013_2_1")] + [f"LGG/{f}" for f in brats_case("Brats18_TCIA10_103_1")],
                  ["Brats18_2013_2_1", "Brats18_TCIA10_103_1"]),
    "brats2020": (brats_case("BraTS20_Training_001", ext=".nii"), ["BraTS20_Training_001"]),
    "brats2021": (brats_case("BraTS2021_00000") + brats_case("BraTS2021_00002"), ["BraTS2021_00000", "BraTS2021_00002"]),
    "brats2023": (brats_case("BraTS-GLI-00000-000", ("t1n", "t1c", "t2w", "t2f", "seg"), sep="-"), ["BraTS-GLI-00000-000"]),
    "ixi": ([f"IXI002-Guys-0828-{c}.nii.gz" for c in ("T1", "T2", "PD")] + ["IXI012-HH-1211-T2.nii.gz"],
            ["IXI002-Guys-0828", "IXI012-HH-1211"]),
    # as NiChart redistributes IXI: images/ and a brain parcellation per subject in brain-labels/
    "ixi_with_labels": (["images/IXI012-HH-1211_T1.nii.gz", "images/IXI013-HH-1212_T1.nii.gz",
                         "brain-labels/IXI012-HH-1211_T1_DLMUSE.nii.gz", "brain-labels/IXI013-HH-1212_T1_DLMUSE.nii.gz"],
                        ["IXI012-HH-1211", "IXI013-HH-1212"]),
    "bids": (["sub-01/anat/sub-01_T2w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_acq-fast_T2w.nii.gz",
              "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"], ["sub-01", "sub-02_ses-1"]),
}
DETECTED = {"brats2018": "brats", "brats2020": "brats", "brats2021": "brats", "ixi_with_labels": "ixi"}
MODALITY = {"ixi_with_labels": "t1"}  # the fixture's only contrast


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    made = {name: write_files(base / name, files) for name, (files, _) in FIXTURES.items()}
    (made["bids"] / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    return made


@pytest.mark.parametrize("name", FIXTURES)
def test_layout_is_detected_and_read(roots, name):
    assert detect_layout(roots[name]) == DETECTED.get(name, name)
    subjects = read_dataset(roots[name], "auto", MODALITY.get(name, "t2"))
    assert [s.subject_id for s in subjects] == FIXTURES[name][1]
    assert all(s.image.is_file() for s in subjects)
    labelled = name.startswith("brats")
    assert all((s.segmentation is not None) == labelled for s in subjects)
    assert all((s.brain_mask is not None) == (name in ("hcp", "ixi_with_labels")) for s in subjects)


@pytest.mark.parametrize("name, modality, file_part", [
    ("hcp", "t1", "T1w_acpc"), ("brats2021", "flair", "_flair"), ("brats2023", "t1ce", "-t1c"),
    ("brats2023", "flair", "-t2f"), ("ixi", "t1", "-T1"), ("bids", "t1", "_T1w"),
])
def test_modality_maps_to_the_layouts_own_file(roots, name, modality, file_part):
    subjects = read_dataset(roots[name], "auto", modality)
    assert subjects and all(file_part in s.image.name for s in subjects)


@pytest.mark.parametrize("name, modality", [("hcp", "flair"), ("ixi", "flair"), ("bids", "t1ce"), ("brats2021", "dwi")])
def test_missing_modality_lists_the_choices(roots, name, modality):
    with pytest.raises(LayoutError, match=f"no modality '{modality}'; choose one of"):
        read_dataset(roots[name], "auto", modality)


def test_missing_file_is_named(tmp_path):
    write_files(tmp_path, brats_case("BraTS2021_00001", ("t1", "t2", "flair")))
    with pytest.raises(LayoutError, match="missing file: .*BraTS2021_00001_seg.nii.gz"):
        read_dataset(tmp_path, "brats", "t2")


def test_unknown_folder_and_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(LayoutError, match="cannot tell the layout"):
        read_dataset(tmp_path)
    with pytest.raises(LayoutError, match="unknown layout 'oasis'"):
        read_dataset(tmp_path, "oasis")
    with pytest.raises(LayoutError, match="folder not found"):
        read_dataset(tmp_path / "absent")


def test_cohort_is_recorded(roots):
    assert {s.cohort for s in read_dataset(roots["ixi"], cohort="healthy")} == {"healthy"}
    assert {s.cohort for s in read_dataset(roots["brats2021"], cohort="tumour")} == {"tumour"}


def test_incomplete_cases_can_be_collected_instead_of_raised(tmp_path):
    write_files(tmp_path, brats_case("BraTS2021_00001") + brats_case("BraTS2021_00002", ("t1", "t2")))
    incomplete: list = []
    subjects = read_dataset(tmp_path, "auto", "t2", "tumour", incomplete)
    assert [s.subject_id for s in subjects] == ["BraTS2021_00001"]
    assert incomplete == [{"subject": "BraTS2021_00002", "error": f"missing file: {tmp_path / 'BraTS2021_00002' / 'BraTS2021_00002_seg.nii.gz'}"}]


def test_a_plain_folder_of_scans_is_one_subject_per_file(tmp_path):
    for name in ("site_b_002.nii.gz", "site_b_001.nii", "readme.txt", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    subjects = read_dataset(tmp_path, "auto", "flair", "healthy")
    assert [(s.subject_id, s.dataset, s.image.name) for s in subjects] == [
        ("site_b_001", "plain", "site_b_001.nii"), ("site_b_002", "plain", "site_b_002.nii.gz")]


def test_an_ixi_mask_beside_the_image_is_the_subjects_and_of_its_contrast_only(tmp_path):
    write_files(tmp_path, ["IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-T2.nii.gz", "IXI012-HH-1211-T2.nii.gz",
                           "masks/IXI002-Guys-0828_T1_brainmask.nii.gz", "IXI012-HH-1211_mask.nii.gz"])
    t1 = {s.subject_id: s.brain_mask for s in read_dataset(tmp_path, "auto", "t1")}
    assert t1 == {"IXI002-Guys-0828": tmp_path / "masks" / "IXI002-Guys-0828_T1_brainmask.nii.gz"}
    t2 = {s.subject_id: s.brain_mask for s in read_dataset(tmp_path, "auto", "t2")}
    assert t2 == {"IXI002-Guys-0828": None, "IXI012-HH-1211": tmp_path / "IXI012-HH-1211_mask.nii.gz"}  # a T1 mask is not a T2 one


def test_two_masks_for_one_ixi_subject_are_named(tmp_path):
    write_files(tmp_path, ["IXI002-Guys-0828-T1.nii.gz", "a/IXI002-Guys-0828_mask.nii.gz", "b/IXI002-Guys-0828_T1_seg.nii.gz"])
    with pytest.raises(LayoutError, match="IXI002-Guys-0828 has several brain masks .*keep one"):
        read_dataset(tmp_path, "ixi", "t1")
