import nibabel as nib
import numpy as np
from components.data.layouts import BRATS_LABELS, LayoutError, read_brats, read_hcp
from components.data.nifti_io import load_volume


def test_phantoms_read_back_through_the_layout_readers(phantom_roots):
    hcp_root, brats_root = phantom_roots
    hcp, brats = read_hcp(hcp_root), read_brats(brats_root)
    assert len(hcp) == 4 and len(brats) == 3
    assert all(s.image.name == "T2w_acpc_dc_restore_brain.nii.gz" and s.brain_mask.name == "brainmask_fs.nii.gz" for s in hcp)
    assert all(s.image.name == f"{s.subject_id}_t2.nii.gz" and s.segmentation.name == f"{s.subject_id}_seg.nii.gz" for s in brats)
    for modality in ("t1", "t1ce", "flair"):
        assert all(s.image.exists() for s in read_brats(brats_root, modality))


def test_brats_files_are_lps_with_brats_labels(phantom_roots):
    _, brats_root = phantom_roots
    for subject in read_brats(brats_root):
        assert nib.aff2axcodes(nib.load(subject.image).affine) == ("L", "P", "S")
        seg, _ = load_volume(subject.segmentation)
        labels = set(np.unique(seg).astype(int))
        assert labels <= set(BRATS_LABELS) and labels & {1, 2, 4}


def test_healthy_images_are_skull_stripped(phantom_roots):
    subject = read_hcp(phantom_roots[0])[0]
    image, _ = load_volume(subject.image)
    mask, _ = load_volume(subject.brain_mask)
    assert image[mask == 0].max() == 0 and image[mask > 0].mean() > 0


def test_tumours_leave_many_slices_tumour_free(phantom_roots):
    for subject in read_brats(phantom_roots[1]):
        seg, _ = load_volume(subject.segmentation)
        image, _ = load_volume(subject.image)
        tumour_slices = (seg > 0).any(axis=(0, 1)).sum()
        brain_slices = (image > 0).any(axis=(0, 1)).sum()
        assert 0 < tumour_slices < 0.7 * brain_slices


def test_files_do_not_depend_on_the_number_of_workers(tmp_path):
    from components.data.phantoms import PhantomSpec, generate_phantoms

    spec = PhantomSpec(n_healthy=2, n_tumour=1, voxel_size_mm=4.0, seed=3)
    for workers in (1, 2):
        generate_phantoms(tmp_path / f"w{workers}" / "hcp", tmp_path / f"w{workers}" / "brats", spec, workers=workers)
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*.nii.gz"))
    assert len(files) == 2 * 3 + 5
    for name in files:
        np.testing.assert_array_equal(load_volume(tmp_path / "w1" / name)[0], load_volume(tmp_path / "w2" / name)[0])
