"""Stage `train`: the detector on healthy training slices, with Ray Train's TorchTrainer (DDP).

Each epoch every worker reports its losses and rank 0 a checkpoint; a rerun with the same
params and data finds the run in ``artifacts/ray_results`` and resumes from its latest
checkpoint (and appends to the same MLflow run). Set ``RAY_ADDRESS`` to train on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import ray.train
import ray.train.torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from components.data.slice_store import load_slices, read_index
from components.models.registry import build_detector
from pipelines import tracking
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.ray_cluster import ray_session

log = logging.getLogger(__name__)
MODEL_DIR = Path("models/detector")
RAY_RESULTS = Path("artifacts/ray_results")
STATE_FILE = "state.pt"


def healthy_slices(root: str, split: str) -> dict:
    """Images (N, 1, S, S) and brain masks of the healthy subjects of one split."""
    index = read_index(Path(root))
    return load_slices(Path(root), index[(index["cohort"] == "healthy") & (index["split"] == split)])


def _mean_across_workers(values: dict[str, float], count: int) -> dict[str, float]:
    """Average per-sample loss sums over all DDP workers."""
    stacked = torch.tensor([*values.values(), float(count)], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stacked)
    return {k: float(v / stacked[-1]) for k, v in zip(values, stacked[:-1])}


@torch.no_grad()
def validation_l1(detector: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    detector.eval()
    errors = [(detector.reconstruct(x.to(device)) - x.to(device)).abs().mean().item() * len(x) for x in images.split(64)]
    return sum(errors) / len(images)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()

    train_images = torch.from_numpy(healthy_slices(config["data_root"], "train")["images"])
    detector = build_detector(config["model_name"], **config["hyperparams"])
    state = None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
        detector.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(detector)  # to the worker's device, wrapped in DDP
    # Created after the move, so a restored optimizer state lands on the parameters' device.
    optimizer = torch.optim.Adam(detector.parameters(), lr=config["learning_rate"])
    if state:
        optimizer.load_state_dict(state["optimizer"])
    start_epoch = state["epoch"] + 1 if state else 0

    dataset = TensorDataset(train_images)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config["seed"], drop_last=True)
    loader = DataLoader(dataset, batch_size=max(1, config["batch_size"] // world), sampler=sampler, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, move_to_device=True)
    val_images = torch.from_numpy(healthy_slices(config["data_root"], "val")["images"]) if rank == 0 else None

    for epoch in range(start_epoch, config["epochs"]):
        sampler.set_epoch(epoch)
        model.train()
        sums, count = {}, 0
        for (x,) in loader:
            loss, parts = detector.loss(x, model(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(x)
            count += len(x)
        metrics = {f"train_{k}": v for k, v in _mean_across_workers(sums, count).items()} | {"epoch": epoch}
        if rank != 0:
            ray.train.report(metrics)
            continue
        metrics["val_l1"] = validation_l1(detector, val_images, device)
        _log_epoch(config, metrics, epoch)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": detector.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                       Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _log_epoch(config: dict, metrics: dict, epoch: int) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    stamp = int(1000 * time.time())
    MlflowClient(config["tracking_uri"]).log_batch(
        config["mlflow_run_id"], metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items() if k != "epoch"]
    )


def data_fingerprint(root: Path) -> str:
    """A short hash of the processed data's index and spec: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for name in ("index.parquet", "preprocess_spec.json"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:12]


def run(params: Params) -> dict:
    data_root = params.path(PROCESSED_DIR)
    read_index(data_root)  # a clear message when `preprocess` has not run
    model_params, train_params = params.model, params.train
    build_detector(model_params.name, **model_params.hyperparams())  # fail fast on a bad model param
    fingerprint = data_fingerprint(data_root)
    config_hash = hashlib.sha256(
        json.dumps([model_params.model_dump(), train_params.model_dump(), fingerprint], sort_keys=True).encode()
    ).hexdigest()[:10]
    run_name = f"{model_params.name}-{config_hash}"

    run_id = tracking.training_run(params, run_name)
    client = tracking.client(params)
    for key, value in {**{f"model.{k}": v for k, v in model_params.model_dump().items()},
                       **{f"train.{k}": v for k, v in train_params.model_dump().items()},
                       "data.fingerprint": fingerprint}.items():
        client.log_param(run_id, key, value)

    config = {
        "data_root": str(data_root), "model_name": model_params.name, "hyperparams": model_params.hyperparams(),
        "epochs": train_params.epochs, "batch_size": train_params.batch_size,
        "learning_rate": train_params.learning_rate, "seed": train_params.seed,
        "threads": max(1, int(train_params.cpus_per_worker)),
        "tracking_uri": tracking.tracking_uri(params), "mlflow_run_id": run_id,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=train_params.num_workers, use_gpu=train_params.use_gpu,
            resources_per_worker={"CPU": train_params.cpus_per_worker},
        ),
        run_config=RunConfig(name=run_name, storage_path=str(params.path(RAY_RESULTS))),
    )
    with ray_session():
        result = trainer.fit()
    client.set_terminated(run_id)
    return export_model(params, result.checkpoint, run_id, run_name, result.metrics or {})


def export_model(params: Params, checkpoint: Checkpoint, run_id: str, run_name: str, metrics: dict) -> dict:
    """Write the trained weights and what built them to models/detector (the stage's output)."""
    if checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} produced no checkpoint")
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
    out = params.path(MODEL_DIR)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state["model"], out / "weights.pt")
    summary = {
        "model_name": params.model.name, "hyperparams": params.model.hyperparams(),
        "epochs_trained": state["epoch"] + 1, "mlflow_run_id": run_id, "ray_run_name": run_name,
        "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    (out / "detector.json").write_text(json.dumps(summary, indent=2))
    return summary
