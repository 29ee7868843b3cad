"""One scoring path: the registered pyfunc, the endpoint's predictor and `evaluate` give the same
slice scores (and `evaluate` and the endpoint the same maps) for the same scan, whatever the
recipe's value range ([0, 1], [-1, 1], z-scores)."""

import mlflow.pyfunc
import numpy as np
import pytest
import torch

from components.data.layouts import read_brats
from components.data.nifti_io import load_volume
from components.data.slice_store import read_index, write_index, write_shard
from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from components.models.inference import score_volume
from components.models.registry import build_detector, data_hyperparams
from components.preprocess.presets import PRESETS
from pipelines.evaluate import score_split
from pipelines.params import PreprocessParams
from pipelines.preprocess import process_subject
from pipelines.register import pyfunc_model
from components.scoring.predictor import VolumePredictor
from tests.components.test_detectors import TINY

SIZE = 32
pytestmark = pytest.mark.slow  # MLflow saves and loads the model, six recipes (about a minute)


@pytest.fixture(scope="module")
def scan(phantom_roots):
    subject = read_brats(phantom_roots[1])[0]  # no brain-mask file: the endpoint's case too
    return subject, *load_volume(subject.image)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pyfunc_endpoint_and_evaluate_give_the_same_scores(preset, scan, tmp_path):
    subject, image, affine = scan
    spec = PreprocessParams(preset=preset, size=SIZE).spec()
    torch.manual_seed(0)
    hyperparams = {**TINY["spatial_ae"], **data_hyperparams("spatial_ae", SIZE, spec.output_range)}
    calibration = Calibration(98.0, slice_threshold=0.1, volume_threshold=0.2, pixel_threshold=0.3, reference_scores=[0.1])
    folder = DetectorBundle("spatial_ae", hyperparams, spec, calibration).save(
        tmp_path / "bundle", build_detector("spatial_ae", **hyperparams).state_dict())

    # evaluate: the preprocess stage's shard of this subject, scored as the test split is
    root = tmp_path / "processed"
    slices, _ = process_subject(subject, spec)
    write_index(root, write_shard(root, subject, "test", slices))
    predictor = VolumePredictor.from_folder(folder)
    split = score_split(predictor.detector, root, read_index(root))
    evaluated = split["scores"]
    _, scored = score_volume(predictor.detector, spec, image, affine, calibration)  # the endpoint's and the pyfunc's path
    np.testing.assert_allclose(scored.maps, split["maps"], rtol=0, atol=1e-5)
    if spec.output_range is None:
        assert (slices.images[slices.brain] < 0).any(), "z-scores: part of the brain is negative"

    mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), **pyfunc_model(folder))
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    by_volume = model.predict({"volume": image, "affine": affine})
    by_slices = model.predict({"images": slices.images, "brain": slices.brain})
    np.testing.assert_array_equal(by_volume["slice"], slices.slice_numbers)
    np.testing.assert_allclose(by_volume["score"], evaluated, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_slices, evaluated, rtol=0, atol=1e-5)

    # the endpoint: one score per input slice (the highest of its model slices)
    served = {s["index"]: s["score"] for s in predictor.predict(image, affine)["slices"]}
    expected = by_volume.groupby("slice")["score"].max()
    assert sorted(served) == expected.index.tolist()
    np.testing.assert_allclose([served[i] for i in expected.index], expected.to_numpy(), rtol=0, atol=1e-5)
