"""The Ray-free training loop under a process group made by hand: two gloo processes, each with
its own slices, end every epoch with the same weights and the same BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from components.models.registry import DETECTORS
from components.training.collectives import sync_buffers
from components.training.loop import LoopData, LoopSettings, prepare, run_epochs
from tests.components.test_detectors import batch, tiny

WORLD = 2


def _slices(rank: int, n: int = 4) -> list[dict]:
    """Rank-specific batches: brighter slices on rank 1, so its statistics differ from rank 0's."""
    torch.manual_seed(100 + rank)
    out = []
    for _ in range(n):
        slices = batch(8)
        out.append({"image": slices.image * (0.5 + rank / 2), "brain": slices.brain})
    return out


def _join(rank: int, folder: str) -> None:
    """Join the gloo group of WORLD processes that meet through a file in ``folder``."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)


def _train_each_detector(rank: int, folder: str) -> None:
    _join(rank, folder)
    try:
        states = {}
        for name in sorted(DETECTORS):
            torch.manual_seed(0)  # the same initial weights on every worker, as Ray Train's workers
            detector = tiny(name)
            optimizers, start = prepare(detector, 1e-3, torch.device("cpu"), LoopSettings())
            reports = []
            data = LoopData(train=lambda: _slices(rank), val=lambda: _slices(0, 1),
                            unlabelled=[batch(8).unlabelled] if detector.uses_unlabelled else None)
            run_epochs(detector, optimizers, data, LoopSettings(epochs=2, seed=rank), torch.device("cpu"),
                       lambda metrics, state: reports.append((metrics, state is not None)), start)
            states[name] = {"state": detector.state_dict(), "reports": reports}
        torch.save(states, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _average_buffers(rank: int, folder: str) -> None:
    _join(rank, folder)
    try:
        norm = torch.nn.BatchNorm2d(3)
        norm.running_mean.fill_(float(rank))
        norm.num_batches_tracked.fill_(10 + rank)
        sync_buffers(norm)
        torch.save(norm.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(worker, folder) -> list[dict]:
    mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_two_workers_end_each_epoch_with_the_same_weights_and_statistics(tmp_path):
    ranks = _spawn(_train_each_detector, tmp_path)
    for name in DETECTORS:
        first, second = (r[name] for r in ranks)
        assert first["state"].keys() == second["state"].keys()
        for key, value in first["state"].items():
            assert torch.equal(value, second["state"][key]), f"{name}: {key} differs between the workers"
        # both workers report each epoch, rank 0 alone with a checkpoint and validation losses
        assert [m["epoch"] for m, _ in first["reports"]] == [m["epoch"] for m, _ in second["reports"]] == [0, 1]
        assert [has for _, has in first["reports"]] == [True, True] and [has for _, has in second["reports"]] == [False, False]
        assert any(k.startswith("val_") for k in first["reports"][0][0]) or not DETECTORS[name].trainable
        # the loss is the mean over both workers' slices, the same number on each
        train_parts = {k: v for k, v in first["reports"][-1][0].items() if k.startswith("train_") and "per_s" not in k}
        assert train_parts == {k: second["reports"][-1][0][k] for k in train_parts}


def test_buffers_are_averaged_and_counters_taken_from_rank_0(tmp_path):
    first, second = _spawn(_average_buffers, tmp_path)
    assert torch.equal(first["running_mean"], torch.full((3,), 0.5)) and torch.equal(second["running_mean"], torch.full((3,), 0.5))
    assert int(first["num_batches_tracked"]) == int(second["num_batches_tracked"]) == 10


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_process_trains_without_any_process_group(precision):
    """The loop on its own: no Ray, no process group; the loss falls over a few epochs."""
    torch.manual_seed(0)
    detector = tiny("spatial_ae")
    settings = LoopSettings(epochs=6, precision=precision, channels_last=precision == "bf16")
    optimizers, start = prepare(detector, 3e-3, torch.device("cpu"), settings)
    reports = []
    data = _slices(0)
    run_epochs(detector, optimizers, LoopData(train=lambda: data), settings, torch.device("cpu"),
               lambda metrics, state: reports.append(metrics), start)
    losses = [next(v for k, v in m.items() if k.startswith("train_") and "per_s" not in k) for m in reports]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
