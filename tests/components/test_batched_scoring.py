"""Uploads scored together get the scores each gets alone: every detector scores a slice
without looking at its batch neighbours, and each volume is made relative to its own scan.
On the CPU here and on a GPU where there is one (benchmarks/gpu_check.py)."""

import dataclasses

import numpy as np
import pytest
import torch

from components.models.calibration import Calibration
from components.models.inference import score_volumes
from components.models.registry import DETECTORS
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import preprocess_volume
from tests.components.test_detectors import SIZE, tiny


def head(depth: int, seed: int) -> np.ndarray:
    """A skull-stripped head of ``depth`` axial slices: a textured ellipsoid, zero around it."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (40, 40, depth)), indexing="ij")
    inside = x**2 + y**2 + (z / 1.1) ** 2 < 0.8
    return np.where(inside, 0.5 + 0.3 * np.random.default_rng(seed).random(inside.shape), 0).astype(np.float32)


@pytest.fixture(scope="module")
def volumes():
    """Three scans' slices, of different lengths, together more than one batch (a GPU's 64, several
    of a CPU's 16)."""
    spec = PreprocessSpec(size=SIZE)
    processed = [preprocess_volume(head(depth, seed), np.diag([3.0, 3.0, 3.0, 1.0]), spec)
                 for seed, depth in enumerate((40, 17, 33))]
    assert sum(len(v.images) for v in processed) > 64 and len({len(v.images) for v in processed}) > 1
    return processed


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_volumes_scored_together_get_the_scores_each_gets_alone(name, device, volumes):
    torch.manual_seed(0)
    detector = tiny(name).to(device)
    calibration = Calibration(98.0, 0.1, 0.1, 0.1, [0.1], score_reference="scan_median")
    together = score_volumes(detector, volumes, calibration)
    assert len(together) == len(volumes)
    for volume, shared in zip(volumes, together):
        (alone,) = score_volumes(detector, [volume], calibration)
        assert len(shared.scores) == len(volume.images)
        for field in ("scores", "maps", "levels"):
            np.testing.assert_allclose(getattr(shared, field), getattr(alone, field), rtol=1e-4, atol=1e-6, err_msg=field)
        assert shared.alternatives.keys() == alone.alternatives.keys()
        for key, values in alone.alternatives.items():
            np.testing.assert_allclose(shared.alternatives[key], values, rtol=1e-4, atol=1e-6, err_msg=key)
    # scan-relative scores are relative to each scan's own median, not the batch's
    raw = score_volumes(detector, volumes, dataclasses.replace(calibration, score_reference="none"))
    for shared, plain in zip(together, raw):
        np.testing.assert_allclose(shared.scores, plain.scores / max(np.median(plain.scores), np.finfo(np.float32).tiny),
                                   rtol=1e-5)


def test_no_volumes_score_nothing():
    assert score_volumes(tiny("spatial_ae"), [], Calibration(98.0, 0.1, 0.1, 0.1, [0.1])) == []
