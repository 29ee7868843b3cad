"""Augmentation keeps shapes, the background and the value range, and each step does its job."""

import pytest
import torch

from components.data.augment import AugmentSpec, augment

OFF = AugmentSpec(flip_p=0.0, brightness=0.0, noise_std=0.0)


def batch(n=64, size=32):
    x = torch.zeros(n, 1, size, size)
    brain = torch.zeros(n, 1, size, size, dtype=torch.bool)
    brain[..., 4:28, 6:20] = True  # off-centre along the left-right axis (-2)
    x[brain] = torch.linspace(0.2, 0.8, size)[None, None, :, None].expand_as(x)[brain]
    return x, brain


def test_everything_off_is_the_identity():
    x, brain = batch()
    assert torch.equal(augment(x, brain, OFF), x)


def test_flip_mirrors_about_half_the_batch_left_to_right():
    torch.manual_seed(0)
    x, brain = batch()
    out = augment(x, brain, AugmentSpec(flip_p=0.5, brightness=0.0, noise_std=0.0))
    flipped = [bool(torch.equal(o, i.flip(-2))) for o, i in zip(out, x)]
    assert 20 < sum(flipped) < 44 and all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, x))


def test_brightness_shifts_only_the_brain_of_some_samples_within_delta():
    torch.manual_seed(1)
    x, brain = batch()
    out = augment(x, brain, AugmentSpec(flip_p=0.0, brightness=0.1, brightness_p=0.3, noise_std=0.0))
    shift = (out - x)[brain.expand_as(x)].view(len(x), -1)
    changed = shift.abs().amax(1) > 0
    assert 8 < changed.sum() < 32 and shift.abs().max() <= 0.1 + 1e-6
    assert torch.all(out[~brain] == 0)


def test_noise_has_the_asked_std_and_the_range_is_kept():
    torch.manual_seed(2)
    x, brain = batch()
    out = augment(x, brain, AugmentSpec(flip_p=0.0, brightness=0.0, noise_std=0.05))
    assert (out - x)[brain].std().item() == pytest.approx(0.05, rel=0.1)
    assert out.min() >= 0 and out.max() <= 1 and torch.all(out[~brain] == 0)


def test_rotation_moves_the_brain_and_fills_with_the_background():
    torch.manual_seed(3)
    x, brain = batch()
    x = torch.where(brain, x, torch.full_like(x, -1.0))
    spec = AugmentSpec(flip_p=0.0, brightness=0.0, noise_std=0.0, rotation_deg=30, scale=0.1, affine_p=1.0)
    out = augment(x, brain, spec, background=-1.0, value_range=(-1.0, 1.0))
    assert out.shape == x.shape and out.min() >= -1.0
    assert (out != x).float().mean() > 0.05
    assert (out == -1.0).float().mean().item() == pytest.approx((x == -1.0).float().mean().item(), abs=0.1)


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="train.augment.flip_p is a probability"):
        AugmentSpec(flip_p=1.5)
    with pytest.raises(ValueError, match="train.augment.scale must be < 1"):
        AugmentSpec(scale=1.0)
