"""The predictor without Ray or HTTP: a bundle folder and a volume in any orientation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from components.data.layouts import read_brats
from components.data.nifti_io import VolumeLimits, load_volume
from components.errors import InvalidVolumeError
from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from components.models.inference import Scored, relative_to_level, score_volume
from components.models.registry import DETECTORS, build_detector, data_hyperparams
from components.preprocess.spec import PreprocessSpec
from components.preprocess.geometry import to_ras
from components.scoring.predictor import SiteUnavailableError, UnknownSiteError, Upload, VolumePredictor, smoothed_maps
from tests.components.test_detectors import TINY


def test_response_describes_every_input_slice(predictor, phantom_roots):
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    result = predictor.predict(image, affine)
    assert result["model"] == {"name": "brainomaly-detector", "version": "7", "detector": "spatial_vae"}
    assert result["slices_scored"] + result["slices_skipped"] == image.shape[2]
    indices = [s["index"] for s in result["slices"]]
    assert indices == sorted(indices) and all(image[:, :, i].any() for i in indices)
    assert result["volume_score"] == max(s["score"] for s in result["slices"])
    assert {s["verdict"] for s in result["slices"]} <= {"normal", "anomalous"}


def test_verdicts_follow_the_thresholds_of_the_site_asked_for(predictor, phantom_roots):
    """A slice is anomalous when its score is above the slice threshold, the volume when its
    score is above the volume threshold: thresholds set between the scan's own scores."""
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    scores = np.array([s["score"] for s in predictor.predict(image, affine)["slices"]])
    middle, top = float(np.median(scores)), float(scores.max())
    at = {"middle": Calibration(98.0, middle, top * 0.999, 0.3, [0.1]), "high": Calibration(98.0, top, top * 1.001, 0.3, [0.1])}
    served = VolumePredictor(predictor.bundle, predictor.detector, sites=at)
    for site, calibration in at.items():
        result = served.predict(image, affine, site=site)
        assert [s["verdict"] == "anomalous" for s in result["slices"]] == [s["score"] > calibration.slice_threshold
                                                                         for s in result["slices"]]
        assert result["threshold"] == calibration.slice_threshold and result["site"] == site
    middle_result, high_result = (served.predict(image, affine, site=site) for site in at)
    assert {s["verdict"] for s in middle_result["slices"]} == {"normal", "anomalous"}
    assert {s["verdict"] for s in high_result["slices"]} == {"normal"}  # none above the highest score
    assert middle_result["volume_verdict"] == "anomalous" and high_result["volume_verdict"] == "normal"


def test_same_scan_in_ras_gives_the_same_scores_per_slice(predictor, phantom_roots):
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    ras_image, _ = to_ras(image, affine)
    ras_affine = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    ras_affine[:2, 3] = affine[:2, 3] + affine[:2, :2] @ (np.array(image.shape[:2]) - 1)
    lps = {s["index"]: s["score"] for s in predictor.predict(image, affine)["slices"]}
    ras = {s["index"]: s["score"] for s in predictor.predict(ras_image, ras_affine)["slices"]}
    assert lps.keys() == ras.keys()
    np.testing.assert_allclose(list(lps.values()), list(ras.values()), rtol=1e-5)


@pytest.mark.parametrize("preset", ["dual_vae_improved", "latent_constrained", "introvae"])
def test_a_papers_recipe_is_replayed_at_serving_time(phantom_roots, tmp_path, preset):
    """The bundle's spec, whatever the recipe, is what an uploaded scan goes through; slice
    indices stay the file's own even after resampling."""
    from dataclasses import replace

    from components.preprocess.volume import preprocess_volume, reference_landmarks
    from pipelines.params import PreprocessParams

    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    spec = PreprocessParams(preset=preset, size=32).spec()
    if PreprocessParams(preset=preset).reference != "none":
        spec = replace(spec, histogram_landmarks=reference_landmarks(*load_volume(read_brats(phantom_roots[1])[1].image), spec))
    hyperparams = {"base_channels": 8, "latent_channels": 8, "downsamplings": 3, "output_range": spec.output_range}
    bundle = DetectorBundle(
        model_name="spatial_vae", hyperparams=hyperparams, preprocess=spec,
        calibration=Calibration(98.0, slice_threshold=0.1, volume_threshold=0.2, pixel_threshold=0.3, reference_scores=[0.1]),
    )
    saved = build_detector("spatial_vae", **hyperparams).eval()
    folder = bundle.save(tmp_path / "bundle", saved.state_dict())
    result = VolumePredictor.from_folder(folder).predict(image, affine)
    indices = [s["index"] for s in result["slices"]]
    assert len(indices) == len(set(indices)) == result["slices_scored"] > 0  # one entry per input slice
    assert result["slices_scored"] + result["slices_skipped"] == image.shape[2]
    assert set(indices) <= set(range(image.shape[2])) and result["volume_score"] == max(s["score"] for s in result["slices"])
    # the training-time recipe and the saved detector, run directly, give the served scores
    direct = preprocess_volume(image, affine, spec)
    scores = saved.inspect(torch.from_numpy(direct.images), torch.from_numpy(direct.brain)).scores.detach().numpy()
    expected: dict[int, float] = {}
    for index, score in zip(direct.slice_numbers.tolist(), scores.tolist()):
        expected[index] = max(score, expected.get(index, score))
    assert indices == sorted(expected)
    np.testing.assert_allclose([s["score"] for s in result["slices"]], [expected[i] for i in indices], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_serves_from_its_bundle(name, phantom_roots, tmp_path):
    """What `register` logs and the endpoint loads: any detector, rebuilt from its bundle alone."""
    hyperparams = {**TINY[name], **data_hyperparams(name, 16, (0.0, 1.0))}
    bundle = DetectorBundle(
        model_name=name, hyperparams=hyperparams, preprocess=PreprocessSpec(size=16),
        calibration=Calibration(98.0, slice_threshold=0.1, volume_threshold=0.2, pixel_threshold=0.3, reference_scores=[0.1]),
    )
    folder = bundle.save(tmp_path, build_detector(name, **hyperparams).state_dict())
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    result = VolumePredictor.from_folder(folder).predict(image, affine)
    assert result["model"]["detector"] == name and result["slices_scored"] > 0
    assert all(np.isfinite(s["score"]) for s in result["slices"])


def test_a_model_that_scores_relative_to_the_scan_serves_its_scores_over_the_scans_median(predictor, tmp_path, phantom_roots):
    """The rule travels in the bundle's calibration: the endpoint's scores are the detector's own
    divided by their median over the scan, and a bundle saved before the rule existed scores as before."""
    relative = DetectorBundle(**{**predictor.bundle.__dict__, "calibration": Calibration(
        98.0, slice_threshold=1.5, volume_threshold=2.0, pixel_threshold=0.3, reference_scores=[1.0],
        score_reference="scan_median")})
    folder = relative.save(tmp_path / "relative", predictor.detector.state_dict())
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    plain = [s["score"] for s in predictor.predict(image, affine)["slices"]]
    served = VolumePredictor.from_folder(folder).predict(image, affine)
    np.testing.assert_allclose([s["score"] for s in served["slices"]], np.asarray(plain) / np.median(plain), rtol=1e-5)
    assert [s["verdict"] for s in served["slices"]] == ["anomalous" if s["score"] > 1.5 else "normal" for s in served["slices"]]
    saved = json.loads((folder / "bundle.json").read_text())
    for field in ("score_reference", "pixel_median", "median_shape"):
        del saved["calibration"][field]
    (folder / "bundle.json").write_text(json.dumps(saved))
    legacy = VolumePredictor.from_folder(folder).bundle.calibration
    # as bundles before the fields scored
    assert legacy.score_reference == "none" and legacy.pixel_median == 5 and legacy.median_shape == "cubic"


def test_thick_slices_are_smoothed_as_the_calibration_says(predictor, phantom_roots):
    """A lesion seen on one of a scan's 6 mm slices survives the served maps' median; a bundle
    calibrated before the window followed millimetres keeps smoothing in cubes, its threshold's units."""
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    thick = affine @ np.diag([1.0, 1.0, 6.0 / np.abs(affine[2, 2]), 1.0])
    slices = predictor.prepare(Upload(image, thick), VolumeLimits())
    assert slices.spacing_mm[0] == pytest.approx(6.0)
    maps = np.zeros_like(slices.images)
    middle, centre = len(maps) // 2, maps.shape[-1] // 2
    maps[middle, 0, centre - 4 : centre + 4, centre - 4 : centre + 4] = 1.0
    scored = Scored(maps, np.zeros(len(maps), np.float32), {}, np.zeros(len(maps), np.float32))
    now = replace(predictor.bundle.calibration, median_shape="millimetres", pixel_median=3)
    assert smoothed_maps(scored, slices, now)[middle, 0, centre - 2 : centre + 2, centre - 2 : centre + 2].min() == 1.0
    assert smoothed_maps(scored, slices, replace(now, median_shape="cubic")).max() == 0.0



def test_a_model_that_scores_against_each_slices_residual_serves_its_scores_over_that_level(predictor, tmp_path, phantom_roots):
    """"brain_median" travels in the bundle too: each served score is the detector's own over the
    median of that slice's map inside the brain, as `evaluate` calibrated it."""
    relative = DetectorBundle(**{**predictor.bundle.__dict__, "calibration": Calibration(
        98.0, slice_threshold=3.0, volume_threshold=4.0, pixel_threshold=0.3, reference_scores=[1.0],
        score_reference="brain_median")})
    folder = relative.save(tmp_path / "brain_median", predictor.detector.state_dict())
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    as_given = replace(relative.calibration, score_reference="none")
    slices, scored = score_volume(predictor.detector, predictor.bundle.preprocess, image, affine, as_given)
    served = VolumePredictor.from_folder(folder).predict(image, affine)["slices"]
    np.testing.assert_allclose([s["score"] for s in served], relative_to_level(scored.scores, scored.levels), rtol=1e-4)
    assert [s["verdict"] for s in served] == ["anomalous" if s["score"] > 3.0 else "normal" for s in served]


def test_a_volume_the_recipe_would_blow_up_is_refused_before_resampling(predictor):
    """A small upload is no small job when the recipe resamples it: its grid, not its bytes, sets the cost."""
    resampling = replace(predictor, bundle=replace(predictor.bundle, preprocess=PreprocessSpec(size=32, spacing_mm=1.0)))
    coarse = np.diag([40.0, 40.0, 40.0, 1.0])  # 4 voxels of 40 mm along each axis: 160 of 1 mm
    with pytest.raises(InvalidVolumeError, match=r"resampled to 1.0 mm, the volume shape \(160, 160, 160\) holds"):
        resampling.predict(np.ones((4, 4, 4), np.float32), coarse, limits=VolumeLimits(max_voxels=10**6))


@pytest.mark.parametrize("preset", [None, "dual_vae_improved", "latent_constrained"])  # percentile, N4, z-score
def test_extreme_but_finite_intensities_get_a_clear_error_never_a_nan(preset, tmp_path):
    """Voxels near float32's limit are finite, so they pass the upload checks; the recipe's
    arithmetic must not turn them into NaN scores."""
    from pipelines.params import PreprocessParams

    spec = PreprocessParams(size=32, **({"preset": preset} if preset else {})).spec()
    hyperparams = {**TINY["spatial_ae"], **data_hyperparams("spatial_ae", 32, spec.output_range)}
    calibration = Calibration(98.0, slice_threshold=0.1, volume_threshold=0.2, pixel_threshold=0.3, reference_scores=[0.1])
    folder = DetectorBundle("spatial_ae", hyperparams, spec, calibration).save(
        tmp_path, build_detector("spatial_ae", **hyperparams).state_dict())
    volume = np.zeros((40, 40, 40), np.float32)
    volume[8:32, 8:32, 8:32] = np.random.default_rng(0).random((24, 24, 24)) * 3e38
    try:
        result = VolumePredictor.from_folder(folder).predict(volume, np.eye(4))
    except InvalidVolumeError as err:
        assert "too extreme" in str(err) or "finite" in str(err)
    else:
        assert np.isfinite([s["score"] for s in result["slices"]]).all() and np.isfinite(result["volume_score"])


def test_scoring_stops_at_its_deadline(predictor, phantom_roots):
    """A replica's thread cannot be cancelled: the predictor itself stops past the deadline."""
    import time

    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    with pytest.raises(TimeoutError, match="past its deadline, before slice 0 of"):
        predictor.predict(image, affine, deadline=time.monotonic() - 1)
    assert predictor.predict(image, affine, deadline=time.monotonic() + 600)["slices_scored"] > 0


def test_uploads_answered_together_get_their_own_answers_and_errors(predictor, phantom_roots):
    """One pass for several uploads: each answer is the one it gets alone (its map, its site's
    verdicts), and a neighbour's unusable scan or unknown site fails only that upload."""
    scans = [load_volume(subject.image) for subject in read_brats(phantom_roots[1])[:2]]
    served = VolumePredictor(predictor.bundle, predictor.detector, "brainomaly-detector", "7",
                             sites={"north": Calibration(98.0, 0.0, 0.0, 0.3, [0.1])})
    uploads = [Upload(*scans[0], "nifti"), Upload(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)),
               Upload(*scans[1], None, "north"), Upload(*scans[1], None, "south")]
    answers = served.predict_together(uploads)
    assert isinstance(answers[1], InvalidVolumeError) and isinstance(answers[3], UnknownSiteError)
    for upload, answer in zip(uploads[::2], answers[::2]):
        alone = served.predict(upload.data, upload.affine, upload.with_map, upload.site)
        assert answer.keys() == alone.keys() and answer["site"] == upload.site
        np.testing.assert_allclose([s["score"] for s in answer["slices"]], [s["score"] for s in alone["slices"]], rtol=1e-5)
        assert [s["verdict"] for s in answer["slices"]] == [s["verdict"] for s in alone["slices"]]
    assert {s["verdict"] for s in answers[2]["slices"]} == {"anomalous"}  # the site's threshold 0, not the training one's
    assert answers[0]["map"][:2] == b"\x1f\x8b"  # the map asked for, gzipped NIfTI


def test_a_site_whose_calibration_failed_to_load_fails_alone(predictor, phantom_roots):
    """Its uploads are refused as unavailable (a server fault, 503), named as such; the training
    calibration and every other site serve on, in the same pass."""
    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    served = VolumePredictor(predictor.bundle, predictor.detector, "brainomaly-detector", "7",
                             sites={"north": Calibration(98.0, 0.0, 0.0, 0.3, [0.1])},
                             broken_sites={"east": "its calibration (run r1) could not be loaded (OSError)"})
    answers = served.predict_together([Upload(image, affine, None, "east"), Upload(image, affine, None, "north"),
                                       Upload(image, affine)])
    assert isinstance(answers[0], SiteUnavailableError) and "'east' is calibrated" in str(answers[0])
    assert answers[1]["site"] == "north" and answers[2]["site"] is None
    assert served.description()["broken_sites"]["east"]["error"].startswith("its calibration")
    assert list(served.description()["sites"]) == ["north"]


def test_a_dicom_series_gets_its_seg_and_parametric_map(predictor, phantom_roots):
    """The SEG is the parametric map above the pixel threshold, small components dropped (drawn on
    the model's slices, as the evaluation draws it, then carried to the series' grid); both lie
    on the series' grid; a DICOM map of a scan with no DICOM source is refused."""
    import io

    import highdicom as hd
    import pydicom

    from components.data.dicom_io import files_from_zip, read_series, series_zip, volume_to_series

    image, affine = load_volume(read_brats(phantom_roots[1])[0].image)
    data, series_affine, source = read_series(files_from_zip(series_zip(volume_to_series(image, affine)), 1 << 30, 1024))
    answers = {kind: predictor.predict(data, series_affine, kind, source=source) for kind in ("dicom-seg", "dicom-pmap")}
    seg = hd.seg.segread(io.BytesIO(answers["dicom-seg"]["map"])).get_volume(combine_segments=True)
    pmap = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(answers["dicom-pmap"]["map"]))).get_volume()
    assert seg.array.shape == pmap.array.shape == data.shape
    above, marked = pmap.array > predictor.bundle.calibration.pixel_threshold, seg.array > 0
    assert marked.any() and above[marked].mean() > 0.9  # up to where the two grids' interpolations differ
    assert marked.sum() < 1.1 * above.sum()
    with pytest.raises(InvalidVolumeError, match="upload the scan as a DICOM series"):
        predictor.predict(image, affine, "dicom-seg")
