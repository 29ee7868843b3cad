import numpy as np
import pytest

from components.data.layouts import read_brats, read_hcp
from components.data.nifti_io import load_volume
from components.data.phantoms import to_lps
from components.errors import InvalidVolumeError
from components.preprocess.spec import PreprocessSpec
from components.preprocess.geometry import to_input_grid, to_ras
from components.preprocess.volume import preprocess_volume


@pytest.fixture(scope="module")
def brats_case(phantom_roots):
    subject = read_brats(phantom_roots[1])[0]
    image, affine = load_volume(subject.image)
    seg, _ = load_volume(subject.segmentation)
    return image, affine, seg


@pytest.mark.parametrize("size", [32, 64, 128])
def test_slices_are_model_ready(brats_case, size):
    image, affine, seg = brats_case
    out = preprocess_volume(image, affine, PreprocessSpec(size=size), segmentation=seg)
    n = len(out.slice_numbers)
    assert out.images.shape == out.brain.shape == out.tumour.shape == (n, 1, size, size)
    assert out.images.dtype == np.float32 and 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert out.images[~out.brain].max() == 0.0
    assert out.tumour_pixels.sum() > 0 and (out.tumour_pixels == 0).any()


def test_orientation_does_not_change_the_slices(brats_case):
    """A BraTS (LPS) file and its RAS re-encoding give identical slices and slice numbers."""
    image, affine, seg = brats_case
    ras_image, _ = to_ras(image, affine)
    ras_affine = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    ras_affine[:2, 3] = affine[:2, 3] + affine[:2, :2] @ (np.array(image.shape[:2]) - 1)
    lps_out = preprocess_volume(image, affine, PreprocessSpec(), segmentation=seg)
    ras_out = preprocess_volume(ras_image, ras_affine, PreprocessSpec(), segmentation=to_ras(seg, affine)[0])
    np.testing.assert_array_equal(lps_out.images, ras_out.images)
    np.testing.assert_array_equal(lps_out.slice_numbers, ras_out.slice_numbers)


def test_slice_numbers_follow_the_input_file(brats_case):
    """With the axial axis stored top-down, slice numbers count in the file's own order."""
    image, affine, seg = brats_case
    flipped_affine = affine.copy()
    flipped_affine[:3, 2] *= -1
    flipped_affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (image.shape[2] - 1)
    up = preprocess_volume(image, affine, PreprocessSpec(), segmentation=seg)
    down = preprocess_volume(image[:, :, ::-1], flipped_affine, PreprocessSpec(), segmentation=seg[:, :, ::-1])
    np.testing.assert_array_equal(np.sort(down.slice_numbers), np.sort(image.shape[2] - 1 - up.slice_numbers))
    tumour_up = dict(zip(up.slice_numbers, up.tumour_pixels))
    for number, pixels in zip(down.slice_numbers, down.tumour_pixels):
        assert seg[:, :, ::-1][:, :, number].astype(bool).sum() == pixels
        assert tumour_up[image.shape[2] - 1 - number] == pixels


def test_tumour_pixels_are_counted_before_resizing(brats_case):
    image, affine, seg = brats_case
    out = preprocess_volume(image, affine, PreprocessSpec(size=32), segmentation=seg)
    for number, pixels in zip(out.slice_numbers, out.tumour_pixels):
        assert (seg[:, :, number] > 0).sum() == pixels


def test_provided_mask_is_used(phantom_roots):
    subject = read_hcp(phantom_roots[0])[0]
    image, affine = load_volume(subject.image)
    mask, _ = load_volume(subject.brain_mask)
    out = preprocess_volume(image, affine, PreprocessSpec(), brain_mask=mask)
    assert out.tumour is None and (out.tumour_pixels == 0).all()


@pytest.mark.parametrize(
    "volume, message",
    [(np.zeros((20, 20, 20), np.float32), "constant"),
     (np.ones((20, 20, 20), np.float32), "constant"),
     (np.pad(np.ones((3, 3, 3), np.float32), 10), "fewer than 100 brain voxels")],
)
def test_unusable_volumes(volume, message):
    with pytest.raises(InvalidVolumeError, match=message):
        preprocess_volume(volume, np.eye(4), PreprocessSpec())


def test_mask_shape_must_match(brats_case):
    image, affine, _ = brats_case
    with pytest.raises(InvalidVolumeError, match="brain mask shape"):
        preprocess_volume(image, affine, PreprocessSpec(), brain_mask=np.ones((3, 3, 3)))


@pytest.mark.parametrize(
    "kwargs", [{"size": 50}, {"min_brain_fraction": 1.5}, {"percentiles": (99.0, 1.0)}]
)
def test_bad_spec(kwargs):
    with pytest.raises(ValueError, match="preprocess"):
        PreprocessSpec(**kwargs)


def test_to_lps_roundtrip():
    data = np.arange(24).reshape(2, 3, 4)
    lps, affine = to_lps(data, np.eye(4))
    back, _ = to_ras(lps, affine)
    np.testing.assert_array_equal(back, data)


def test_anisotropic_voxels_are_not_stretched(brats_case):
    """The same anatomy stored with 2x coarser voxels along one in-plane axis gives the same slices."""
    image, affine, seg = brats_case
    coarse = image[::2]  # every other voxel along the file's first axis
    coarse_affine = affine.copy()
    coarse_affine[:3, 0] *= 2
    fine = preprocess_volume(image, affine, PreprocessSpec(size=32))
    squashed = preprocess_volume(coarse, coarse_affine, PreprocessSpec(size=32))
    # The same slices are kept, but for one at the edge whose brain area sits at the cut-off.
    common = np.intersect1d(fine.slice_numbers, squashed.slice_numbers)
    assert len(common) >= max(len(fine.slice_numbers), len(squashed.slice_numbers)) - 1
    a, b = (np.isin(out.slice_numbers, common) for out in (fine, squashed))
    brain_overlap = (fine.brain[a] & squashed.brain[b]).sum() / np.maximum(fine.brain[a], squashed.brain[b]).sum()
    assert brain_overlap > 0.85
    assert np.corrcoef(fine.images[a].ravel(), squashed.images[b].ravel())[0, 1] > 0.9


def test_slices_know_their_spacing_in_millimetres(brats_case):
    """Between slices: the volume's (or the resampled) spacing; a pixel: the square crop's side over the size."""
    image, affine, _ = brats_case
    thick_affine = affine.copy()
    thick_affine[:3, 2] *= 3  # the same voxels stored as slices three times as far apart
    native, thick = (preprocess_volume(image, a, PreprocessSpec(size=32)) for a in (affine, thick_affine))
    spacing = np.abs(np.diag(affine)[:3])
    box = native.geometry.box[0]
    assert native.spacing_mm == pytest.approx((spacing[2], (box.stop - box.start) * spacing[0] / 32))
    assert thick.spacing_mm == pytest.approx((3 * spacing[2], native.spacing_mm[1]))
    assert preprocess_volume(image, affine, PreprocessSpec(size=32, spacing_mm=1.5)).spacing_mm[0] == 1.5


def test_lesion_kinds_are_counted_apart_and_survive_resampling(brats_case):
    image, affine, seg = brats_case
    lesions = np.zeros(image.shape, np.uint8)
    lesions[20:24, 20:24, :] = 1  # a column of focus
    lesions[40:46, 40:46, :] = 2  # and one of cavity
    out = preprocess_volume(image, affine, PreprocessSpec(size=32), segmentation=seg, lesions=lesions)
    assert set(out.lesion_kind_pixels) == {1, 2}
    np.testing.assert_array_equal(out.lesion_kind_pixels[1] + out.lesion_kind_pixels[2], out.lesion_pixels)
    assert (out.lesion_kind_pixels[1] == 16).all() and (out.lesion_kind_pixels[2] == 36).all()
    resampled = preprocess_volume(image, affine, PreprocessSpec(size=32, spacing_mm=2.0), segmentation=seg, lesions=lesions)
    assert set(resampled.lesion_kind_pixels) == {1, 2}  # nearest-neighbour: no kind blends into another


def _permuted(image, affine, order):
    """The same scan stored with its voxel axes in another order (same world positions)."""
    return np.transpose(image, order), affine[:, list(order) + [3]]


@pytest.mark.parametrize(
    "layout, spec",
    [
        ("lps", PreprocessSpec()),
        ("axial axis first", PreprocessSpec()),
        ("3 mm slices, resampled to 1 mm", PreprocessSpec(spacing_mm=1.0)),
        ("resampled to 2 mm, 128 px", PreprocessSpec(spacing_mm=2.0, size=128)),
    ],
)
def test_slice_maps_go_back_onto_the_input_grid(brats_case, layout, spec):
    """The tumour mask, taken through preprocessing and back, lands on the input's tumour."""
    image, affine, seg = brats_case
    if layout == "axial axis first":
        (image, affine), seg = _permuted(image, affine, (2, 0, 1)), np.transpose(seg, (2, 0, 1))
    if layout.startswith("3 mm"):
        image, seg, affine = image[:, :, ::3], seg[:, :, ::3], affine @ np.diag([1.0, 1.0, 3.0, 1.0])
    out = preprocess_volume(image, affine, spec, segmentation=seg)
    back = to_input_grid(out.tumour[:, 0].astype(np.float32), out.geometry)
    assert back.shape == image.shape
    truth = seg > 0
    found = back > 0.5
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.85, f"{layout}: Dice {dice:.2f} between the round-tripped and the input tumour"
