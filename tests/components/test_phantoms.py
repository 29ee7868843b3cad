import nibabel as nib
import numpy as np
from components.data.layouts import BRATS_LABELS, read_brats, read_hcp
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
    assert len(files) == 2 * 3 + 6
    for name in files:
        np.testing.assert_array_equal(load_volume(tmp_path / "w1" / name)[0], load_volume(tmp_path / "w2" / name)[0])


def test_other_lesions_are_labelled_apart_from_the_tumour(tmp_path):
    from components.data.phantoms import LESION_LABELS, PhantomSpec, generate_phantoms

    spec = PhantomSpec(n_healthy=3, n_tumour=3, voxel_size_mm=3.0, seed=8, foci_p=1.0, cavity_p=1.0)
    generate_phantoms(tmp_path / "hcp", tmp_path / "brats", spec)
    for subject, flair_subject in zip(read_brats(tmp_path / "brats"), read_brats(tmp_path / "brats", "flair")):
        lesions, _ = load_volume(subject.lesions)
        seg, _ = load_volume(subject.segmentation)
        t2, _ = load_volume(subject.image)
        flair, _ = load_volume(flair_subject.image)
        assert set(np.unique(lesions).astype(int)) == {0, *LESION_LABELS.values()}
        assert not ((lesions > 0) & (seg > 0)).any()
        cavity, brain = lesions == LESION_LABELS["cavity"], t2 > 0
        # A resection cavity holds CSF: brighter than the brain on T2, darker on FLAIR.
        assert t2[cavity].mean() > 1.3 * t2[brain].mean() and flair[cavity].mean() < 0.7 * flair[brain].mean()
    assert all(s.lesions is None for s in read_hcp(tmp_path / "hcp"))


def test_tumours_range_down_to_a_few_voxels():
    from components.data.phantoms import PhantomSpec, load_atlas, make_subject

    atlas = load_atlas(3.0)
    spec = PhantomSpec(voxel_size_mm=3.0, tumour_radius_mm=(3.0, 3.0), multifocal_p=0.0, foci_p=0.0, cavity_p=0.0)
    seg = make_subject(atlas, spec, np.random.default_rng(0), with_tumour=True).volumes["seg"]
    assert 1 <= (seg > 0).sum() <= 20


def test_mass_effect_pushes_tissue_away_from_the_tumour():
    from components.data.phantoms import push_aside

    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], (40, 40, 40)).copy()
    centre = np.array([20, 20, 20])
    (pushed,) = push_aside((ramp,), centre, radius_vox=5.0, strength=0.4)
    # Beside the centre along x, each voxel now holds tissue from nearer the centre ...
    assert pushed[24, 20, 20] < ramp[24, 20, 20] and pushed[16, 20, 20] > ramp[16, 20, 20]
    # ... far away almost nothing moved, and outside the tumour the mapping never folds.
    assert abs(pushed[38, 20, 20] - ramp[38, 20, 20]) < 0.1
    assert np.all(np.diff(pushed[26:36, 20, 20]) > 0) and np.all(np.diff(pushed[5:15, 20, 20]) > 0)


def test_lesions_are_irregular_several_and_overlap_normal_tissue_in_intensity():
    from scipy import ndimage

    from components.data.phantoms import PhantomSpec, load_atlas, make_subject

    atlas = load_atlas(2.0)
    spec = PhantomSpec(tumour_radius_mm=(12.0, 16.0), satellite_radius_mm=(5.0, 6.0), multifocal_p=1.0, max_tumours=3,
                       foci_p=0.0, cavity_p=0.0)
    volumes = make_subject(atlas, spec, np.random.default_rng(4), with_tumour=True).volumes
    seg, t2, flair, brain = volumes["seg"], volumes["t2"], volumes["flair"], volumes["brain"] > 0
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    assert ndimage.label(seg > 0)[1] >= 2  # multifocal
    core = np.isin(seg, (1, 4))
    # Not a sphere: the solid core fills well under the ball of its largest extent would.
    main = ndimage.label(core)[0] == np.argmax(np.bincount(ndimage.label(core)[0].ravel())[1:]) + 1
    centre = np.argwhere(main).mean(0)
    reach = np.sqrt(((np.argwhere(main) - centre) ** 2).sum(1)).max()
    assert main.sum() < 0.6 * 4 / 3 * np.pi * reach**3
    # On T2 edema lies between grey matter and CSF; on FLAIR it is brighter than the brain; its
    # soft border overlaps normal tissue, so no intensity threshold separates it.
    normal = brain & (seg == 0)
    edema = seg == 2
    assert np.median(t2[normal]) < np.median(t2[edema]) < np.percentile(t2[normal], 99)
    assert np.median(flair[edema]) > np.median(flair[normal])
    assert (t2[edema] < np.percentile(t2[normal], 90)).mean() > 0.1


def test_sites_scan_the_same_held_out_subjects_with_their_own_acquisition(tmp_path):
    import nibabel as nib

    from components.data.layouts import read_dataset
    from components.data.phantoms import PhantomSpec, SiteSpec, generate_phantoms, site_folders

    sites = {"home": SiteSpec(), "away": SiteSpec(tissue={"t2": (1.0, 0.8, 0.7)}, slice_thickness_mm=6.0, intensity_scale=300.0)}
    spec = PhantomSpec(n_healthy=1, n_tumour=1, test_healthy=1, test_tumour=1, voxel_size_mm=3.0, seed=2,
                       training_site="home", sites=sites, tumour_radius_mm=(15.0, 15.0), multifocal_p=0.0)
    summary = generate_phantoms(tmp_path / "hcp", tmp_path / "brats", spec, sites_root=tmp_path / "sites")
    assert summary["sites"]["away"]["voxel_mm"] == [3.0, 3.0, 6.0] and summary["sites"]["home"]["voxel_mm"] == [3.0, 3.0, 3.0]
    scans = {}
    for site in sites:
        healthy, tumour = site_folders(tmp_path / "sites", site)
        (case,) = read_dataset(tumour, "auto", "t2", "tumour")
        (_,) = read_dataset(healthy, "auto", "t2", "healthy")
        scans[site] = {name: nib.load(path) for name, path in (("t2", case.image), ("seg", case.segmentation))}
    assert nib.affines.voxel_sizes(scans["away"]["t2"].affine)[2] == 6.0  # LPS on disk: the axial axis is still the third
    # The same tumour, seen through another grid: about the same volume in mm^3.
    volume = {s: (np.asarray(v["seg"].dataobj) > 0).sum() * np.prod(nib.affines.voxel_sizes(v["seg"].affine)) for s, v in scans.items()}
    assert 0.6 < volume["away"] / volume["home"] < 1.6
    # Another contrast and other units: grey matter sits nearer CSF, and the numbers are smaller.
    ratio = {}
    for site, images in scans.items():
        t2, seg = np.asarray(images["t2"].dataobj, np.float32), np.asarray(images["seg"].dataobj)
        normal = (t2 > 0) & (seg == 0)
        ratio[site] = np.median(t2[normal]) / np.percentile(t2[normal], 99)
        assert site != "away" or np.percentile(t2[normal], 99) < 600
    assert ratio["away"] > ratio["home"] + 0.1
