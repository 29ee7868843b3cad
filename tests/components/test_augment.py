"""Augmentation keeps shapes, the background and the value range, and each step does its job."""

import pytest
import torch

from components.data.augment import AugmentSpec, augment, bias_field, gaussian_blur

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


def test_blur_smooths_the_chosen_samples_and_leaves_the_others_bit_for_bit():
    torch.manual_seed(4)
    x = torch.rand(4, 1, 32, 32)
    out = gaussian_blur(x, torch.tensor([0.0, 0.5, 1.0, 2.0]))
    assert torch.equal(out[0], x[0])
    roughness = [float((o[..., 1:, :] - o[..., :-1, :]).abs().mean()) for o in out]
    assert roughness == sorted(roughness, reverse=True)  # the wider the blur, the smoother
    assert out.mean((1, 2, 3)) == pytest.approx(x.mean((1, 2, 3)), abs=0.01)  # it moves intensity, it makes none
    assert gaussian_blur(x[:, :, :8, :8], torch.tensor([4.0] * 4)).shape == (4, 1, 8, 8)  # wider than a small slice


def test_a_bias_field_is_smooth_positive_and_as_strong_as_asked():
    torch.manual_seed(5)
    field = bias_field(torch.zeros(3, 1, 64, 64), torch.tensor([0.0, 0.3, 0.7]))
    spread = field.log().amax((1, 2, 3)) - field.log().amin((1, 2, 3))
    assert torch.allclose(spread, torch.tensor([0.0, 0.3, 0.7]), atol=1e-5) and bool((field > 0).all())
    assert float((field[2, :, 1:] - field[2, :, :-1]).abs().max()) < 0.1  # no step between neighbours


def test_acquisition_changes_the_asked_share_of_samples_in_the_brain_only():
    torch.manual_seed(6)
    x, brain = batch()
    spec = AugmentSpec(flip_p=0.0, brightness=0.0, noise_std=0.0, bias_field=0.7, blur_px=1.5, acquisition_p=0.5)
    out = augment(x, brain, spec)
    changed = (out - x).abs().amax((1, 2, 3)) > 1e-6
    assert 38 < changed.sum() < 58  # blur or bias, each with p = 0.5: 3 samples in 4
    assert torch.all(out[~brain] == 0) and out.min() >= 0 and out.max() <= 1


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="train.augment.flip_p is a probability"):
        AugmentSpec(flip_p=1.5)
    with pytest.raises(ValueError, match="train.augment.scale must be < 1"):
        AugmentSpec(scale=1.0)
    with pytest.raises(ValueError, match="train.augment.acquisition_p is a probability"):
        AugmentSpec(acquisition_p=2.0)
    with pytest.raises(ValueError, match="train.augment.blur_px must be <= 4"):
        AugmentSpec(blur_px=10.0)
    with pytest.raises(ValueError, match="train.augment.bias_field must be >= 0"):
        AugmentSpec(bias_field=-0.1)
