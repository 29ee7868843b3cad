"""The four autoencoder baselines on tiny inputs: shapes, loss parts, a training step through
the detector interface, determinism at inference, and the registry's errors."""

import pytest
import torch

from components.models.autoencoders import DenseAE, DenseVAE, SpatialAE, SpatialVAE
from components.models.registry import build_detector, data_hyperparams
from components.models.detector import Slices

TINY = {"base_channels": 4, "downsamplings": 2}
AUTOENCODERS = ["dense_ae", "dense_vae", "spatial_ae", "spatial_vae"]


def tiny(name, **extra):
    latent = {"latent_size": 16} if name.startswith("dense") else {"latent_channels": 4}
    return build_detector(name, **TINY, **latent, **data_hyperparams(name, 16, (0.0, 1.0)), **extra)


@pytest.mark.parametrize("size, downsamplings", [(32, 3), (64, 4), (128, 4)])
def test_spatial_latent_follows_the_paper(size, downsamplings):
    model = SpatialVAE(base_channels=8, latent_channels=16, downsamplings=downsamplings).eval()
    out = model(torch.rand(2, 1, size, size))
    latent = size // 2**downsamplings
    assert out.reconstruction.shape == (2, 1, size, size)
    assert out.mu.shape == out.logvar.shape == (2, 16, latent, latent)
    assert 0.0 <= out.reconstruction.min() and out.reconstruction.max() <= 1.0


def test_dense_latent_is_a_vector():
    out = DenseVAE(base_channels=4, latent_size=512, downsamplings=2, image_size=32).eval()(torch.rand(3, 1, 32, 32))
    assert out.mu.shape == out.logvar.shape == (3, 512) and out.reconstruction.shape == (3, 1, 32, 32)
    plain = DenseAE(base_channels=4, latent_size=32, downsamplings=2, image_size=32).eval()(torch.rand(3, 1, 32, 32))
    assert plain.mu.shape == (3, 32) and plain.logvar is None


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_loss_parts_and_training_through_the_interface(name):
    torch.manual_seed(0)
    model = tiny(name)
    x = torch.rand(8, 1, 16, 16)
    _, parts = model.loss(Slices(x, x > 0))
    variational = name.endswith("vae")
    assert set(parts) == ({"loss", "l1", "kl"} if variational else {"loss", "l1"})
    if variational:
        assert parts["kl"] >= 0 and parts["loss"] == pytest.approx(parts["l1"] + 0.01 * parts["kl"], rel=1e-5)
    else:
        assert parts["loss"] == parts["l1"]
    optimizers = model.make_optimizers(1e-2)
    synced = []
    first = model.train_step(Slices(x, x > 0), optimizers, lambda params: synced.append(len(list(params))))
    for _ in range(30):
        last = model.train_step(Slices(x, x > 0), optimizers)
    assert synced == [len(list(model.parameters()))]  # every parameter's gradient offered for averaging
    assert last["l1"] < first["l1"]


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_inference_is_deterministic_and_maps_are_residuals(name):
    model = tiny(name).eval()
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(model.anomaly_map(x, x > 0), model.anomaly_map(x, x > 0))
    torch.testing.assert_close(model.anomaly_map(x, x > 0), (x - model.reconstruct(x)).abs())
    brain = torch.ones_like(x, dtype=torch.bool)
    assert model.slice_score(x, model.anomaly_map(x, x > 0), brain).shape == (3,)


def test_plain_autoencoders_take_no_kl_weight_and_errors_name_the_problem():
    assert "kl_weight" not in data_hyperparams("spatial_ae", 64, None)
    with pytest.raises(ValueError, match="not a detector"):
        build_detector("made_up")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        build_detector("spatial_ae", kl_weight=0.1)
    with pytest.raises(ValueError, match="downsamplings"):
        build_detector("spatial_vae", downsamplings=0)
    with pytest.raises(ValueError, match="divisible"):
        DenseAE(image_size=30, downsamplings=2)


def test_spatial_ae_has_half_the_latent_channels_of_the_vae():
    ae, vae = SpatialAE(base_channels=4, latent_channels=8, downsamplings=2), SpatialVAE(base_channels=4, latent_channels=8, downsamplings=2)
    assert ae.to_latent.out_channels == 8 and vae.to_latent.out_channels == 16
