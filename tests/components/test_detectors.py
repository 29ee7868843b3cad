"""Every registered detector through the one interface on tiny inputs, and the losses and
scores of the dual-VAE, latent-constrained, IntroVAE and diffusion detectors by hand."""

import numpy as np
import pytest
import torch

from components.models.detector import Slices, lesion_removed, residual_map
from components.models.inference import score_slices
from components.models.dual_vae import grey_squares, input_l2, masked_elbo, overlay
from components.models.introvae import patch_grid, ssim_map, triplet_patches, zscore_in_brain
from components.models.latent_constrained import low_rank_penalty
from components.models.diffusion import multiscale_noise, patch_masks
from components.models.registry import DETECTORS, build_detector, contrast_residual, data_hyperparams

SIZE = 16
VAE = {"base_channels": 4, "latent_size": 8, "downsamplings": 2}
TINY = {
    "anovaegan": {"base_channels": 4, "latent_channels": 4, "downsamplings": 2},
    "ce_dvae": VAE, "vae_ce": VAE, "dual_vae": VAE,
    "dense_ae": {"base_channels": 4, "latent_size": 8, "downsamplings": 2},
    "dense_vae": {"base_channels": 4, "latent_size": 8, "downsamplings": 2},
    "spatial_ae": {"base_channels": 4, "latent_channels": 4, "downsamplings": 2},
    "spatial_vae": {"base_channels": 4, "latent_channels": 4, "downsamplings": 2},
    "latent_constrained": {"base_channels": 4, "latent_size": 8, "downsamplings": 2},
    "introvae": {"base_channels": 4, "downsamplings": 2, "latent_channels": 4, "margin": 10.0, "search_steps": 3,
                 "patch_size": 8, "patch_channels": [4, 8], "patch_hidden": 16, "patch_embedding": 8, "patch_stride": 2},
    "diffusion": {"base_channels": 8, "levels": 2, "timesteps": 100, "noise_level": 30, "sampling_steps": 3},
    "intensity": {"top_fraction": 0.1},
    "denoising_ae": {"base_channels": 4, "levels": 2, "noise_resolution": 4},
    "conditioned_ddpm": {"base_channels": 8, "levels": 2, "timesteps": 100, "noise_level": 30, "sampling_steps": 3},
    "rectified_flow": {"base_channels": 8, "levels": 2, "steps": 2, "noise_resolution": 4, "corruption": "both"},
}
LEARNERS = ["ce_dvae", "dual_vae", "vae_ce", "latent_constrained", "introvae", "diffusion", "denoising_ae",
            "conditioned_ddpm", "rectified_flow"]


def tiny(name: str):
    return build_detector(name, **TINY[name], **data_hyperparams(name, SIZE, (0.0, 1.0)))


def batch(n: int = 6) -> Slices:
    x = torch.rand(n, 1, SIZE, SIZE)
    brain = torch.zeros_like(x, dtype=torch.bool)
    brain[..., 3:13, 3:13] = True
    x = torch.where(brain, x, torch.zeros_like(x))
    return Slices(x, brain, Slices(x.flip(-1), brain.flip(-1)))


def test_every_detector_has_tiny_settings():
    assert set(TINY) == set(DETECTORS)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_trains_scores_and_reloads_through_the_interface(name):
    torch.manual_seed(0)
    detector, slices = tiny(name), batch()
    optimizers = detector.make_optimizers(1e-3)
    synced = []
    parts = detector.train_step(slices, optimizers, lambda params: synced.append(len(list(params))))
    assert (parts or not detector.trainable) and all(isinstance(v, float) and v == v for v in parts.values())
    # every parameter's gradient is offered for averaging, once per optimizer step
    assert sum(synced) == sum(p.numel() > 0 for p in detector.parameters())
    assert len(synced) == len(optimizers)
    assert set(detector.eval().validation_losses(slices)) <= set(parts)
    maps, scores, alternatives, _ = detector.inspect(slices.image, slices.brain)
    assert maps.shape == slices.image.shape and scores.shape == (len(slices.image),)
    assert not maps[~slices.brain].any(), "maps are zero outside the brain"
    assert all(v.shape == scores.shape for v in alternatives.values())
    again = tiny(name)
    again.load_state_dict(detector.state_dict())
    torch.testing.assert_close(again.eval().inspect(slices.image, slices.brain).scores, scores)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_trains_in_bf16_autocast_with_channels_last(name):
    """The GPU recipe (bf16 autocast, NHWC) runs on CPU too: same code, finite losses."""
    torch.manual_seed(0)
    detector, slices = tiny(name).to(memory_format=torch.channels_last), batch()
    slices = slices._replace(image=slices.image.contiguous(memory_format=torch.channels_last))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = detector.train_step(slices, detector.make_optimizers(1e-3))
        scores = detector.eval().inspect(slices.image, slices.brain).scores
    assert all(np.isfinite(v) for v in parts.values()) and torch.isfinite(scores.float()).all()


def blobs(n: int = 6) -> Slices:
    """A fixed batch with something to learn: a bright Gaussian blob at n places around the centre."""
    axis = torch.linspace(-1, 1, SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angles = torch.arange(n, dtype=torch.float32)
    images = torch.exp(-((x - 0.3 * angles.cos()[:, None, None]) ** 2 + (y - 0.3 * angles.sin()[:, None, None]) ** 2) / 0.2)
    brain = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.bool)
    brain[..., 2:14, 2:14] = True
    images = torch.where(brain, images[:, None], torch.zeros(()))
    return Slices(images, brain, Slices(images.flip(-1), brain.flip(-1)))


def validation_loss_before_and_after(name: str, learning_rate: float, steps: int = 30) -> tuple[float, float]:
    """The validation loss on a fixed batch before and after ``steps`` updates, its random draws
    (noise, corruptions, steps) seeded alike both times."""
    torch.manual_seed(0)
    detector, slices = tiny(name), blobs()
    torch.manual_seed(1)
    before = detector.eval().validation_losses(slices)["loss"]
    optimizers = detector.train().make_optimizers(learning_rate)
    for _ in range(steps):
        detector.train_step(slices, optimizers)
    torch.manual_seed(1)
    return before, detector.eval().validation_losses(slices)["loss"]


# the autoencoders and AnoVAEGAN have learning tests of their own (test_autoencoders.py, test_anovaegan.py)
@pytest.mark.parametrize("name", LEARNERS)
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(name):
    """Learning, not one finite step: the validation loss (its random draws seeded alike) falls."""
    before, after = validation_loss_before_and_after(name, 3e-3)
    assert after < 0.95 * before


@pytest.mark.parametrize("name", ["diffusion", "conditioned_ddpm", "rectified_flow", "denoising_ae"])
def test_the_learning_test_fails_with_optimisation_disabled(name):
    """What the test above measures is the updates: at a learning rate of 0 the loss stays put."""
    before, after = validation_loss_before_and_after(name, 0.0, steps=5)
    assert after == pytest.approx(before, rel=1e-5)


def test_dual_vae_needs_its_unlabelled_slices_and_scores_by_latent_distance():
    detector, slices = tiny("dual_vae"), batch()
    with pytest.raises(ValueError, match="unlabelled"):
        detector.train_step(slices._replace(unlabelled=None), detector.make_optimizers(1e-3))
    detector.eval()
    x, brain = slices.image, slices.brain
    healthy = overlay(detector.healthy.reconstruct(x), brain, 0.0)
    expected = (detector.mixed.encode(x)[0] - detector.mixed.encode(healthy)[0]).norm(dim=1)
    torch.testing.assert_close(detector.inspect(x, brain).scores, expected)
    torch.testing.assert_close(detector.inspect(x, brain).alternatives["input_l2"], input_l2(x, healthy, brain))


def test_masked_likelihood_ignores_pixels_outside_the_brain():
    torch.manual_seed(0)
    vae = build_detector("dense_vae", **TINY["dense_vae"], image_size=SIZE).eval()
    x, brain = batch().image, batch().brain
    noisy_background = torch.where(brain, x, torch.rand_like(x))
    torch.manual_seed(1)
    a = masked_elbo(vae, x, x, brain, samples=1, kl_weight=0.0)[1]
    torch.manual_seed(1)
    b = masked_elbo(vae, x, noisy_background, brain, samples=1, kl_weight=0.0)[1]
    torch.testing.assert_close(a, b)


def test_hand_worked_l2_and_grey_squares():
    x, y = torch.zeros(1, 1, 2, 2), torch.tensor([[[[3.0, 4.0], [5.0, 0.0]]]])
    brain = torch.tensor([[[[True, True], [False, True]]]])
    assert input_l2(x, y, brain).item() == pytest.approx(5.0)  # sqrt(9 + 16)
    masked = grey_squares(torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8, dtype=torch.bool), 0.5, (0.0, 1.0))
    for image in masked:
        changed = image != 0
        assert changed.sum() in (0, 16) and (changed.sum() == 0 or image[changed].unique().numel() == 1)


def test_low_rank_penalty_is_the_tail_of_the_singular_values():
    z = torch.diag(torch.tensor([3.0, 2.0, 1.0]))  # singular values 3, 2, 1; batch of 3
    assert low_rank_penalty(z, 0).item() == pytest.approx(6 / 3)
    assert low_rank_penalty(z, 2).item() == pytest.approx(1 / 3)
    assert low_rank_penalty(torch.ones(4, 5), 1).item() == pytest.approx(0.0, abs=1e-5)  # rank one


def test_latent_constrained_loss_is_the_weighted_sum_and_scores_compare_latents():
    torch.manual_seed(0)
    detector = tiny("latent_constrained")
    loss, _, parts = detector.generator_loss(batch().image)
    assert parts["loss"] == pytest.approx(parts["l1"] + 5 * parts["adversarial"] + parts["latent"] + 0.05 * parts["rank"], rel=1e-5)
    detector.eval()
    x, brain = batch().image, batch().brain
    z, _, z_prime = detector(x)
    torch.testing.assert_close(detector.inspect(x, brain).scores, (z - z_prime).flatten(1).norm(dim=1))
    assert "image_residual" in detector.inspect(x, brain).alternatives


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))
    assert ssim_map(x, x + 0.3 * torch.randn_like(x)).mean() < 0.9


def test_triplets_and_patch_grid():
    x = torch.rand(5, 1, 16, 16)
    anchor, positive, negative = triplet_patches(x, size=8, shift=0, intensity=0.0)
    torch.testing.assert_close(anchor, positive)  # no shift, no intensity change: the same patch
    assert anchor.shape == negative.shape == (5, 1, 8, 8)
    patches, rows, cols = patch_grid(x, size=8, stride=4)
    assert (rows, cols) == (4, 4) and patches.shape == (5 * 16, 1, 8, 8)
    torch.testing.assert_close(patches[5], x[0, :, 2:10, 2:10])  # the patch centred on (6, 6)


def test_zscored_maps_have_zero_mean_unit_std_in_the_brain():
    maps, brain = torch.rand(3, 1, 8, 8) * 5 + 2, batch(3).brain[..., :8, :8]
    brain[..., :4, :4] = True
    z = zscore_in_brain(maps, brain)
    for image, mask in zip(z, brain):
        assert image[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
        assert image[mask].std().item() == pytest.approx(1.0, rel=1e-4)


def test_latent_search_lowers_the_reconstruction_error():
    torch.manual_seed(0)
    detector = tiny("introvae").eval()
    x = batch().image
    detector.search_steps = 0
    before = detector.reconstruction_loss(x, detector.reconstruct(x)).sum()
    detector.search_steps, detector.search_lr = 30, 0.05
    assert detector.reconstruction_loss(x, detector.reconstruct(x)).sum() < before


def test_diffusion_patches_tile_the_slice_and_a_small_noise_level_keeps_the_slice():
    masks = patch_masks(16, 0.5, "cpu")
    assert len(masks) == 4 and torch.stack(masks).sum(0).eq(1).all()
    assert len(patch_masks(16, 1.0, "cpu")) == 1
    detector = tiny("diffusion").eval()
    detector.noise_level = 1  # alpha_bar ~ 1: almost no noise, so the estimate is the input
    x = batch().image
    assert (detector.reconstruct(x) - x).abs().max() < 0.05


def test_multiscale_noise_has_unit_variance_and_more_coarse_energy_than_white_noise():
    generator = torch.Generator().manual_seed(0)
    noise = multiscale_noise((64, 1, 32, 32), generator)
    assert noise.flatten(1).std(1).sub(1).abs().max() < 1e-4
    white = torch.randn(64, 1, 32, 32, generator=generator)
    coarse_energy = [torch.nn.functional.avg_pool2d(n, 8).var().item() for n in (noise, white)]  # left at 1/8 resolution
    assert coarse_energy[0] > 5 * coarse_energy[1]
    with pytest.raises(ValueError, match="noise must be"):
        build_detector("diffusion", noise="pink")


def test_intensity_baseline_scores_a_slice_by_its_brightest_blob():
    detector = tiny("intensity").eval()  # top_fraction 0.1: 7 of the 64 brain pixels inside the rim
    x, brain = torch.zeros(3, 1, SIZE, SIZE), batch(3).brain
    x[1, 0, 5:11, 5:11] = 0.8  # a bright 6 x 6 blob: its 16 inner pixels survive the median filter
    x[2, 0, 8, 8] = 1.0  # one bright pixel: filtered away
    x[:, :, 0, 0] = 1.0  # outside the brain: never counts
    scores = detector.inspect(x, brain).scores
    assert scores.tolist() == pytest.approx([0.0, 0.8, 0.0])


def test_denoising_ae_noise_is_coarse_and_scaled_to_the_value_range():
    torch.manual_seed(0)
    detector = build_detector("denoising_ae", base_channels=4, levels=2, noise_resolution=4, noise_std=0.2,
                              image_size=SIZE, output_range=(-1.0, 1.0))
    noise = detector.coarse_noise(torch.zeros(64, 1, SIZE, SIZE))
    assert 0.2 < noise.std().item() < 0.4  # 0.2 x a range of 2, less the bilinear smoothing
    # Coarse: neighbouring pixels move together far more than white noise's would.
    neighbours = torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1]
    assert neighbours > 0.9



def test_a_one_sided_residual_keeps_only_its_sign_and_an_unknown_one_is_refused():
    x, reconstruction = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.5, 0.5, 0.4])
    assert residual_map(x, reconstruction).tolist() == pytest.approx([0.3, 0.0, 0.5])
    assert residual_map(x, reconstruction, "brighter").tolist() == pytest.approx([0.0, 0.0, 0.5])
    assert residual_map(x, reconstruction, "darker").tolist() == pytest.approx([0.3, 0.0, 0.0])
    torch.manual_seed(0)
    slices = batch()
    both, brighter = (build_detector("denoising_ae", **TINY["denoising_ae"], residual=residual,
                                     **data_hyperparams("denoising_ae", SIZE, (0.0, 1.0))) for residual in ("absolute", "brighter"))
    brighter.load_state_dict(both.state_dict())
    recon = both.eval().reconstruct(slices.image)
    maps = brighter.eval().anomaly_map(slices.image, slices.brain)
    assert torch.equal(maps, (slices.image - recon).clamp(min=0))
    assert torch.equal(both.anomaly_map(slices.image, slices.brain), (slices.image - recon).abs())
    with pytest.raises(ValueError, match="residual must be one of"):
        build_detector("denoising_ae", residual="signed")


def test_a_one_sided_map_leaves_the_verdict_to_the_whole_residual():
    torch.manual_seed(0)
    slices = batch()
    both, brighter = (build_detector("denoising_ae", **TINY["denoising_ae"], residual=residual,
                                     **data_hyperparams("denoising_ae", SIZE, (0.0, 1.0))) for residual in ("absolute", "brighter"))
    brighter.load_state_dict(both.state_dict())
    images, brain = slices.image.numpy(), slices.brain.numpy()
    whole, one_sided = score_slices(both, images, brain), score_slices(brighter, images, brain)
    np.testing.assert_array_equal(one_sided.scores, whole.scores)
    np.testing.assert_array_equal(one_sided.levels, whole.levels)
    assert (one_sided.maps <= whole.maps).all() and (one_sided.maps < whole.maps).any()
    np.testing.assert_array_equal(one_sided.maps[one_sided.maps > 0], whole.maps[one_sided.maps > 0])


def test_a_lesion_removed_is_the_scan_with_the_residual_of_its_sign_replaced_by_the_reconstruction():
    x, reconstruction = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.5, 0.5, 0.4])
    assert lesion_removed(x, reconstruction, "brighter").tolist() == pytest.approx([0.2, 0.5, 0.4])
    assert lesion_removed(x, reconstruction, "darker").tolist() == pytest.approx([0.5, 0.5, 0.9])
    assert torch.equal(lesion_removed(x, reconstruction), reconstruction)
    with pytest.raises(ValueError, match="residual must be one of"):
        lesion_removed(x, reconstruction, "signed")


def test_a_second_restoration_pass_restores_the_scan_less_the_first_passes_lesion_and_training_takes_one():
    torch.manual_seed(0)
    slices = batch()
    one, two = (build_detector("denoising_ae", **TINY["denoising_ae"], residual="brighter", passes=passes,
                               **data_hyperparams("denoising_ae", SIZE, (0.0, 1.0))) for passes in (1, 2))
    two.load_state_dict(one.state_dict())  # the pass count is no weight: a model trained with one restores in two
    with torch.no_grad():
        first = one.eval().unet(slices.image)
        assert torch.equal(one.reconstruct(slices.image), first)
        again = two.eval().unet(torch.minimum(slices.image, first))
        assert torch.equal(two.reconstruct(slices.image), again)
        assert not torch.equal(again, first)
    torch.manual_seed(1)
    loss_one = one.loss(slices)[0]
    torch.manual_seed(1)
    assert torch.equal(two.loss(slices)[0], loss_one)  # the same noise, the same single pass
    for passes in (0, 1.5, True):
        with pytest.raises(ValueError, match="passes must be a whole number >= 1"):
            build_detector("denoising_ae", passes=passes)


def test_an_auto_residual_follows_the_contrast_and_a_chosen_one_stays():
    assert contrast_residual({"residual": "auto", "levels": 2}, "t2") == {"residual": "brighter", "levels": 2}
    assert contrast_residual({"residual": "auto"}, "flair")["residual"] == "brighter"
    assert contrast_residual({"residual": "auto"}, "t1")["residual"] == "absolute"
    assert contrast_residual({"residual": "darker"}, "t2")["residual"] == "darker"
    assert contrast_residual({"levels": 2}, "t2") == {"levels": 2}

def test_rectified_flow_corrupts_only_the_brain_and_takes_its_euler_steps():
    torch.manual_seed(0)
    slices = batch()
    for corruption in ("coarse", "blobs", "both"):
        detector = build_detector("rectified_flow", **{**TINY["rectified_flow"], "corruption": corruption}, image_size=SIZE)
        corrupted = detector.corrupt(slices.image, slices.brain)
        assert torch.equal(corrupted[~slices.brain], slices.image[~slices.brain])
        assert (corrupted - slices.image).abs().amax(dim=(1, 2, 3)).gt(0).all(), corruption  # every slice is changed
    times = []

    def constant_velocity(x, t):  # records when it is asked, moves every pixel by 0.5 per unit time
        times.append(t.tolist())
        return torch.full_like(x, 0.5)

    detector = tiny("rectified_flow")
    detector.steps, detector.velocity_at = 4, constant_velocity
    x = slices.image
    torch.testing.assert_close(detector.reconstruct(x), x + 0.5)  # 4 steps of 1/4: the whole path
    assert [ts[0] for ts in times] == [0.0, 0.25, 0.5, 0.75] and all(len(set(ts)) == 1 for ts in times)
    with pytest.raises(ValueError, match="corruption"):
        build_detector("rectified_flow", corruption="salt")


def test_the_flow_target_is_the_straight_line_from_corrupted_to_healthy():
    """A velocity field that returns healthy - corrupted exactly has zero loss at every t."""
    torch.manual_seed(0)
    detector, slices = tiny("rectified_flow"), batch()
    torch.manual_seed(3)
    corrupted = detector.corrupt(slices.image, slices.brain)
    detector.corrupt = lambda x, brain: corrupted
    detector.velocity_at = lambda x_t, t: slices.image - corrupted
    assert detector.loss(slices)[1]["loss"] == pytest.approx(0.0)


def test_the_conditioned_ddpm_is_guided_by_its_input_and_denoises_the_whole_slice():
    torch.manual_seed(0)
    detector, x = tiny("conditioned_ddpm").eval(), batch().image
    assert detector.patch_fraction == 1.0
    guided = detector.reconstruct(x)
    with torch.no_grad():
        detector.encoder.features[-1].bias.add_(1.0)  # another condition, nothing else changed
    assert (detector.reconstruct(x) - guided).abs().max() > 1e-4
    assert build_detector("diffusion", **TINY["diffusion"]).condition(x) is None
