import pytest
import torch

from components.models.registry import build_detector
from components.models.spatial_vae import SpatialVAE


@pytest.mark.parametrize("size, downsamplings", [(32, 3), (64, 4), (128, 4)])
def test_shapes_follow_the_paper_latent(size, downsamplings):
    model = SpatialVAE(base_channels=8, latent_channels=16, downsamplings=downsamplings).eval()
    x = torch.rand(2, 1, size, size)
    out = model(x)
    latent = size // 2**downsamplings
    assert out.reconstruction.shape == x.shape
    assert out.mu.shape == out.logvar.shape == (2, 16, latent, latent)
    assert 0.0 <= out.reconstruction.min() and out.reconstruction.max() <= 1.0


def test_loss_parts_and_gradient_step():
    torch.manual_seed(0)
    model = SpatialVAE(base_channels=8, latent_channels=8, downsamplings=2, kl_weight=0.1)
    x = torch.rand(8, 1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first, parts = model.loss(x, model(x))
    assert set(parts) == {"loss", "l1", "kl"} and parts["kl"] >= 0
    assert parts["loss"] == pytest.approx(parts["l1"] + 0.1 * parts["kl"], rel=1e-5)
    for _ in range(30):
        loss, _ = model.loss(x, model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item()


def test_eval_reconstruction_is_deterministic():
    model = SpatialVAE(base_channels=8, latent_channels=8, downsamplings=2).eval()
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(model.reconstruct(x), model.reconstruct(x))


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a detector"):
        build_detector("made_up")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        build_detector("spatial_vae", latent_size=3)
    with pytest.raises(ValueError, match="downsamplings"):
        build_detector("spatial_vae", downsamplings=0)
