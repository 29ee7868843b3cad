"""The GPU path, where a CUDA device is present (skipped elsewhere, as in CI): every detector
trains and scores on the GPU in fp32 and in bf16 with channels_last, the Ray-free loop runs
under an NCCL process group, and scores on the GPU match the CPU's."""

import numpy as np
import pytest
import torch
from torch import distributed as dist

from components.metrics.postprocess import smooth_by_subject
from components.models.inference import reconstruct_slices, score_slices, with_reference
from components.models.registry import DETECTORS
from components.training.loop import LoopData, LoopSettings, prepare, run_epochs
from tests.components.test_detectors import batch, tiny

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def on(device: torch.device, slices, layout=torch.contiguous_format):
    move = lambda t: t.to(device) if t.dtype == torch.bool else t.to(device).contiguous(memory_format=layout)  # noqa: E731
    unlabelled = slices.unlabelled._replace(image=move(slices.unlabelled.image), brain=move(slices.unlabelled.brain))
    return slices._replace(image=move(slices.image), brain=move(slices.brain), unlabelled=unlabelled)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_trains_and_scores_on_the_gpu(name, precision):
    torch.manual_seed(0)
    layout = torch.channels_last if precision == "bf16" else torch.contiguous_format
    detector = tiny(name).to(CUDA, memory_format=layout)
    slices = on(CUDA, batch(), layout)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        parts = detector.train_step(slices, detector.make_optimizers(1e-3))
        maps = detector.eval().anomaly_map(slices.image, slices.brain)
        scores = detector.inspect(slices.image, slices.brain).scores
    assert all(np.isfinite(v) for v in parts.values()), parts
    assert maps.device.type == "cuda" and torch.isfinite(maps.float()).all() and torch.isfinite(scores.float()).all()


def test_the_loop_runs_under_an_nccl_process_group(tmp_path):
    """NCCL accepts CUDA tensors only: every collective of the loop (gradients, loss sums,
    BatchNorm buffers) must run on the training device."""
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        detector = tiny("dense_ae")  # BatchNorm: its buffers are synchronised too
        settings = LoopSettings(epochs=2, precision="bf16", channels_last=True)
        optimizers, start = prepare(detector, 1e-3, CUDA, settings)
        data = [{"image": s.image, "brain": s.brain} for s in (on(CUDA, batch(8)) for _ in range(3))]
        reports = []
        run_epochs(detector, optimizers, LoopData(train=lambda: data, val=lambda: data[:1]), settings, CUDA,
                   lambda metrics, state: reports.append((metrics, state)), start)
    finally:
        dist.destroy_process_group()
    assert [m["epoch"] for m, _ in reports] == [0, 1] and all(state is not None for _, state in reports)
    assert all(np.isfinite(v) for m, _ in reports for k, v in m.items() if k.startswith(("train_", "val_")))


@pytest.mark.parametrize("name", ["spatial_vae", "dense_ae", "anovaegan"])
def test_scores_on_the_gpu_match_the_cpus(name):
    torch.manual_seed(0)
    detector = tiny(name).eval()
    slices = batch(16)
    images, brain = slices.image.numpy(), slices.brain.numpy()
    torch.manual_seed(1)
    cpu = score_slices(detector, images, brain).scores
    torch.manual_seed(1)
    gpu = score_slices(detector.to(CUDA), images, brain).scores
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-5)



def test_the_evaluate_stages_scoring_and_figures_run_on_the_gpu():
    """What `evaluate` computes with `evaluate.device: auto` on a GPU machine: scores relative to
    each slice's level, maps smoothed per subject, and the example figure's reconstructions,
    from a detector on the GPU, the same as on the CPU."""
    torch.manual_seed(0)
    detector = tiny("spatial_vae").eval()
    slices = batch(16)
    images, brain, subjects = slices.image.numpy(), slices.brain.numpy(), np.repeat(["a", "b"], 8)

    def evaluate_on(device):
        torch.manual_seed(1)
        scored = with_reference(score_slices(detector.to(device), images, brain), "brain_median")
        return scored.scores, smooth_by_subject(scored.maps, brain, subjects, 3), reconstruct_slices(detector, images[:4])

    for cpu, gpu in zip(evaluate_on(torch.device("cpu")), evaluate_on(CUDA)):
        assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
