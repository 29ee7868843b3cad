"""Fixtures shared by the component tests."""

import pytest
import torch

from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from components.models.registry import build_detector
from components.preprocess.spec import PreprocessSpec
from components.scoring.predictor import VolumePredictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """A tiny untrained spatial VAE loaded from its bundle as the endpoint loads one: fixed, arbitrary scores."""
    torch.manual_seed(0)
    hyperparams = {"base_channels": 8, "latent_channels": 8, "downsamplings": 3}
    bundle = DetectorBundle(
        model_name="spatial_vae", hyperparams=hyperparams, preprocess=PreprocessSpec(size=32),
        calibration=Calibration(98.0, slice_threshold=0.1, volume_threshold=0.2, pixel_threshold=0.3, reference_scores=[0.1]),
    )
    folder = bundle.save(tmp_path_factory.mktemp("bundle"), build_detector("spatial_vae", **hyperparams).state_dict())
    return VolumePredictor.from_folder(folder, "brainomaly-detector", "7")
