"""AnoVAEGAN: alternating updates of two networks through the detector interface."""

import pytest
import torch

from components.models.anovaegan import AnoVAEGAN
from components.models.detector import Slices

TINY = {"base_channels": 4, "latent_channels": 4, "downsamplings": 2}


def test_shapes_and_a_discriminator_logit_per_slice():
    model = AnoVAEGAN(**TINY).eval()
    x = torch.rand(3, 1, 16, 16)
    assert model.reconstruct(x).shape == x.shape and model.discriminator(x).shape == (3, 1)
    torch.testing.assert_close(model.anomaly_map(x, x > 0), (x - model.reconstruct(x)).abs())


def test_two_optimizers_over_disjoint_parameters_at_the_papers_ratio():
    model = AnoVAEGAN(**TINY)
    optimizers = model.make_optimizers(1e-3)
    groups = {name: {id(p) for g in o.param_groups for p in g["params"]} for name, o in optimizers.items()}
    assert not groups["model"] & groups["discriminator"]
    assert groups["model"] | groups["discriminator"] == {id(p) for p in model.parameters()}
    assert optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_step_updates_both_networks_and_syncs_each_group():
    torch.manual_seed(0)
    model = AnoVAEGAN(**TINY, adversarial_weight=0.1)
    x = torch.rand(8, 1, 16, 16)
    before = {name: [p.detach().clone() for p in part.parameters()] for name, part in
              (("critic", model.discriminator), ("decoder", model.decoder))}
    synced = []
    parts = model.train_step(Slices(x, x > 0), model.make_optimizers(1e-2), lambda params: synced.append(len(list(params))))
    assert set(parts) == {"loss", "l1", "kl", "adversarial", "discriminator"}
    assert parts["loss"] == pytest.approx(parts["l1"] + 0.01 * parts["kl"] + 0.1 * parts["adversarial"], rel=1e-5)
    assert synced == [len(list(model.discriminator.parameters())), len(model.generator_parameters())]
    for name, part in (("critic", model.discriminator), ("decoder", model.decoder)):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], part.parameters())), f"{name} did not move"


def test_training_lowers_the_reconstruction_error():
    torch.manual_seed(1)
    model = AnoVAEGAN(**TINY)
    x = torch.rand(8, 1, 16, 16)
    optimizers = model.make_optimizers(1e-2)
    first = model.train_step(Slices(x, x > 0), optimizers)
    for _ in range(40):
        last = model.train_step(Slices(x, x > 0), optimizers)
    assert last["l1"] < first["l1"]
