"""Inference on a chosen device and in a chosen precision: the precision travels with the
thresholds, so every scorer of a bundle scores as it was evaluated."""

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from components.machine import native_bf16
from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from components.models.inference import BATCH_SLICES, even_batches, resolve_device, score_slices
from components.preprocess.spec import PreprocessSpec
from components.scoring.predictor import VolumePredictor
from tests.components.test_detectors import SIZE, batch, tiny


def calibration(precision: str = "fp32") -> Calibration:
    return Calibration(percentile=98.0, slice_threshold=0.1, volume_threshold=0.1, pixel_threshold=0.1,
                       reference_scores=[0.1], score_reference="none", precision=precision)


def test_auto_takes_the_cpu_where_no_gpu_is_visible_and_an_absent_gpu_is_named():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda:1' asked for, but 0 CUDA devices are visible"):
        resolve_device("cuda:1")


def test_the_cpu_is_said_to_compute_bf16_natively_only_where_it_has_the_instructions():
    cpu = torch.device("cpu")
    flags = Path("/proc/cpuinfo")
    if flags.is_file():  # Linux says it independently of torch
        words = set(flags.read_text().split())
        assert native_bf16(cpu) == bool(words & {"avx512_bf16", "amx_bf16"})


def test_a_bf16_bundle_on_a_device_that_emulates_bf16_still_scores_in_bf16_and_says_it_is_slower(tmp_path, caplog,
                                                                                                 monkeypatch):
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    bundle = DetectorBundle("spatial_ae", {**tiny_hyperparams()}, PreprocessSpec(size=SIZE), calibration("bf16"))
    folder = bundle.save(tmp_path / "bf16", detector.state_dict())
    for native in (True, False):
        monkeypatch.setattr("components.scoring.predictor.native_bf16", lambda device, native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="components.scoring.predictor"):
            predictor = VolumePredictor.from_folder(folder, "brainomaly-detector", "3")
        assert predictor.bundle.calibration.precision == "bf16"
        emulated = [r.getMessage() for r in caplog.records if "emulates" in r.getMessage()]
        assert emulated == ([] if native else ["brainomaly-detector v3 was calibrated in bf16, which cpu emulates: "
                                               "it scores in bf16 all the same, slower than in fp32"])


def test_slices_are_scored_in_even_batches_of_at_most_the_default_size_unless_told():
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    seen = []
    first_conv = next(m for m in detector.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda _, inputs: seen.append(len(inputs[0])))
    slices = batch(35)
    score_slices(detector, slices.image.numpy(), slices.brain.numpy(), threads=1)
    assert seen == [35] and BATCH_SLICES >= 35
    seen.clear()
    score_slices(detector, slices.image.numpy(), slices.brain.numpy(), batch_size=20, threads=1)
    assert seen == [18, 17]
    seen.clear()
    score_slices(detector, slices.image.numpy(), slices.brain.numpy(), batch_size=8, threads=2)
    assert sorted(seen) == [5, 6, 6, 6, 6, 6]  # three rounds of two batches at once, in any order


def test_even_batches_cover_every_slice_once_in_order():
    for count, size, threads in ((0, 16, 2), (1, 16, 2), (49, 32, 2), (97, 32, 2), (7, 2, 3), (64, 64, 1)):
        parts = even_batches(count, size, threads)
        assert [i for part in parts for i in part] == list(range(count))
        assert all(len(part) <= size for part in parts) and max(map(len, parts), default=0) - min(map(len, parts), default=0) <= 1
        assert count == 0 or len(parts) % threads == 0 or len(parts) == count


def test_batches_scored_at_once_on_a_cpu_give_what_one_at_a_time_gives():
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    slices = batch(8)
    images, brain = slices.image.numpy(), slices.brain.numpy()
    alone = score_slices(detector, images, brain, batch_size=4, threads=1)  # the same two batches
    first_conv = next(m for m in detector.modules() if isinstance(m, torch.nn.Conv2d))
    together, threads = threading.Barrier(2, timeout=10), set()

    def meet(_, inputs):  # the first two batches wait for each other: they must run at once
        threads.add(threading.current_thread().name)
        together.wait()

    hook = first_conv.register_forward_pre_hook(meet)
    at_once = score_slices(detector, images, brain, batch_size=4, threads=2)
    hook.remove()
    assert all(name.startswith("score") for name in threads) and len(threads) == 2
    for field in ("maps", "scores", "levels"):  # in order, and as each batch scores alone
        np.testing.assert_array_equal(getattr(at_once, field), getattr(alone, field))

    def fail(_, inputs):
        if len(inputs[0]) == 3:
            raise RuntimeError("a batch broke")

    first_conv.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="a batch broke"):  # batches of 2, 3, 3, 2
        score_slices(detector, batch(10).image.numpy(), batch(10).brain.numpy(), batch_size=4, threads=2)


def test_bf16_scores_come_back_as_float32_and_rank_slices_as_fp32_does():
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    slices = batch(16)
    images, brain = slices.image.numpy(), slices.brain.numpy()
    full = score_slices(detector, images, brain)
    half = score_slices(detector, images, brain, precision="bf16")
    assert half.scores.dtype == np.float32 and half.maps.dtype == np.float32
    assert not np.array_equal(full.scores, half.scores)  # bf16 really ran
    np.testing.assert_allclose(half.scores, full.scores, rtol=0.05, atol=1e-3)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        score_slices(detector, images, brain, precision="fp16")


def test_a_calibration_names_its_precision_and_a_bad_one_is_refused_when_built():
    assert dataclasses.asdict(calibration("bf16"))["precision"] == "bf16"
    assert Calibration(**{k: v for k, v in dataclasses.asdict(calibration()).items() if k != "precision"}).precision == "fp32"
    with pytest.raises(ValueError, match="calibration.precision 'int8'"):
        calibration("int8")


def test_the_endpoint_scores_in_the_precision_the_bundle_was_calibrated_in(tmp_path):
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    spec = PreprocessSpec(size=SIZE)
    volume = np.zeros((32, 32, 12), np.float32)  # a skull-stripped scan: brain in a zero background
    volume[6:26, 6:26] = np.random.default_rng(0).uniform(0.2, 1.0, (20, 20, 12))
    scores = {}
    for precision in ("fp32", "bf16"):
        bundle = DetectorBundle("spatial_ae", {**tiny_hyperparams()}, spec, calibration(precision))
        predictor = VolumePredictor.from_folder(bundle.save(tmp_path / precision, detector.state_dict()))
        assert predictor.bundle.calibration.precision == precision
        scores[precision] = [s["score"] for s in predictor.predict(volume, np.eye(4))["slices"]]
    assert scores["fp32"] != scores["bf16"]
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], rtol=0.05, atol=1e-3)


def tiny_hyperparams() -> dict:
    from components.models.registry import data_hyperparams
    from tests.components.test_detectors import TINY

    return {**TINY["spatial_ae"], **data_hyperparams("spatial_ae", SIZE, (0.0, 1.0))}


def test_a_stage_scores_with_a_progress_bar_and_the_endpoint_without(capsys):
    torch.manual_seed(0)
    slices = batch(8)
    score_slices(tiny("spatial_ae"), slices.image.numpy(), slices.brain.numpy(), batch_size=4)
    assert capsys.readouterr().err == ""
    score_slices(tiny("spatial_ae"), slices.image.numpy(), slices.brain.numpy(), batch_size=4, progress="evaluate: test")
    assert "evaluate: test: 100%" in capsys.readouterr().err
