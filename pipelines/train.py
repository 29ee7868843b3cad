"""Stage `train`: the detector on healthy training slices, with Ray Train's TorchTrainer (DDP).

Slices reach the workers as Ray Datasets (``train.get_dataset_shard``), split between workers
each epoch, so a worker on another node needs no copy of the processed data. Whatever its
networks, a detector trains through its own ``train_step``; data parallelism averages the
gradients of every network across workers before each optimizer step. A detector that learns
from unlabelled tumour-cohort slices too (the dual VAE) gets them from a third dataset, cycled
alongside the healthy batches.

Each epoch every worker reports its losses and rank 0 a checkpoint; a rerun with the same
params and data finds the run in ``train.storage_path`` (artifacts/ray_results, or S3/GCS/NFS
on a cluster) and resumes from its latest checkpoint (and appends to the same MLflow run); a
killed worker costs a restart from the latest checkpoint, up to ``train.max_failures`` times.
Set ``RAY_ADDRESS`` to train on a cluster. `tune` runs the same loop through ``make_trainer``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import random
import tempfile
import time
from pathlib import Path

import torch

import ray.train
import ray.train.torch
from ray.train import Checkpoint, DataConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchTrainer

from components.data.augment import AugmentSpec, augment
from components.data.slice_store import read_index
from components.models.detector import Slices
from components.models.registry import DETECTORS, build_detector, data_hyperparams
from components.preprocess.spec import PreprocessSpec
from pipelines import tracking
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR
from pipelines.ray_cluster import ray_session, use_gpu
from pipelines.slice_datasets import slice_dataset

log = logging.getLogger(__name__)
MODEL_DIR = Path("models/detector")
STATE_FILE = "state.pt"
SHUFFLE_BATCHES = 8  # each worker shuffles within a buffer of this many batches (block order is random too)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _mean_across_workers(values: dict[str, float], count: int) -> dict[str, float]:
    """Average per-sample loss sums over all workers."""
    stacked = torch.tensor([*values.values(), float(count)], dtype=torch.float64)
    if _distributed():
        torch.distributed.all_reduce(stacked)
    return {k: float(v / stacked[-1]) for k, v in zip(values, stacked[:-1])}


def average_gradients(parameters) -> None:
    """Data parallelism for any number of networks: average each gradient over the workers
    (one flat all-reduce per call), so every worker takes the same optimizer step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or not _distributed():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


@torch.no_grad()
def validation_losses(detector, device: torch.device) -> dict[str, float]:
    """The detector's loss parts over the healthy validation slices, in eval mode."""
    detector.eval()
    sums, count = {}, 0
    for batch in ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=64, device=device):
        for key, value in detector.validation_losses(Slices(batch["image"], batch["brain"])).items():
            sums[key] = sums.get(key, 0.0) + value * len(batch["image"])
        count += len(batch["image"])
    return {f"val_{k}": v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def validation_auroc(detector, device: torch.device) -> dict[str, float]:
    """Slice AUROC over the tumour cohort's val slices (abnormal: tumour in the slice), the
    comparable signal a sweep selects on; empty when one class is missing."""
    from sklearn.metrics import roc_auc_score

    detector.eval()
    scores, labels = [], []
    for batch in ray.train.get_dataset_shard("tumour_val").iter_torch_batches(batch_size=64, device=device):
        scores.append(detector.inspect(batch["image"], batch["brain"]).scores.float().cpu())
        labels.append(batch["abnormal"].cpu())
    labels = torch.cat(labels).numpy() if labels else []
    if len(set(labels)) < 2:
        return {}
    return {"val_slice_auroc": float(roc_auc_score(labels, torch.cat(scores).numpy()))}


def unlabelled_batches(batch_size: int, device: torch.device) -> list[Slices]:
    """This worker's share of the unlabelled slices, read once and kept (they are few); every
    worker reads its whole shard, so the split dataset is consumed in step."""
    shard = ray.train.get_dataset_shard("unlabelled")
    batches = [Slices(b["image"], b["brain"]) for b in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device)]
    if not batches:
        raise ValueError(f"a worker got fewer than one batch ({batch_size}) of unlabelled tumour-cohort training slices: "
                         "add tumour scans or lower train.batch_size")
    return batches


def endless(batches: list[Slices], seed: int):
    """The batches in a new random order on each pass, without end."""
    rng = random.Random(seed)
    for _ in itertools.count():
        yield from rng.sample(batches, len(batches))


def layout(config: dict) -> torch.memory_format:
    return torch.channels_last if config["channels_last"] else torch.contiguous_format


def autocast(config: dict, device: torch.device):
    """bf16 mixed precision when train.precision asks for it (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()

    torch.manual_seed(config["seed"])  # the same initial weights on every worker
    detector = build_detector(config["model_name"], **config["hyperparams"])
    torch.manual_seed(config["seed"] + rank)  # different noise and augmentation per worker
    state = None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
        detector.load_state_dict(state["model"])
    detector.to(device, memory_format=layout(config))
    # Created after the move, so a restored optimizer state lands on the parameters' device.
    optimizers = detector.make_optimizers(config["learning_rate"])
    if state:
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
    start_epoch = state["epoch"] + 1 if state else 0

    train_shard = ray.train.get_dataset_shard("train")
    batch_size = max(1, config["batch_size"] // world)
    augmentation = AugmentSpec(**config["augment"])
    unlabelled = endless(unlabelled_batches(batch_size, device), config["seed"] + rank) if detector.uses_unlabelled else None

    for epoch in range(start_epoch, config["epochs"]):
        detector.train()
        sums, count = {}, 0
        batches = train_shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=device, local_shuffle_buffer_size=SHUFFLE_BATCHES * batch_size
        )
        started = time.perf_counter()
        for batch in batches:
            x = augment(batch["image"], batch["brain"], augmentation, config["background"], config["output_range"])
            x = x.contiguous(memory_format=layout(config))
            slices = Slices(x, batch["brain"], next(unlabelled) if unlabelled else None)
            with autocast(config, device):
                parts = detector.train_step(slices, optimizers, average_gradients)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(x)
            count += len(x)
        metrics = {f"train_{k}": v for k, v in _mean_across_workers(sums, count).items()} | {"epoch": epoch}
        metrics["train_slices_per_s"] = count * world / (time.perf_counter() - started)
        if rank != 0:
            ray.train.report(metrics)
            continue
        with autocast(config, device):
            metrics |= validation_losses(detector, device)
            if config["validation_auroc"]:
                metrics |= validation_auroc(detector, device)
        _log_epoch(config, metrics, epoch)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": detector.state_dict(), "epoch": epoch,
                        "optimizers": {name: o.state_dict() for name, o in optimizers.items()}}, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _log_epoch(config: dict, metrics: dict, epoch: int) -> None:
    """The epoch's metrics on the run's MLflow run (none for an untracked run, e.g. a benchmark)."""
    if config.get("mlflow_run_id") is None:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    stamp = int(1000 * time.time())
    MlflowClient(config["tracking_uri"]).log_batch(
        config["mlflow_run_id"], metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items() if k != "epoch"]
    )


def flatten(prefix: str, values: dict) -> dict:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}: nested params as flat MLflow param names."""
    flat = {}
    for key, value in values.items():
        flat.update(flatten(f"{prefix}.{key}", value) if isinstance(value, dict) else {f"{prefix}.{key}": value})
    return flat


def data_fingerprint(root: Path) -> str:
    """A short hash of the processed data's index and spec: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for name in ("index.parquet", "preprocess_spec.json"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:12]


def code_fingerprint() -> str:
    """A short hash of the training code (detectors, augmentation, this loop, the datasets): a run
    resumes its checkpoint only when this code is unchanged, so a fix is trained, not skipped."""
    files = sorted(Path(inspect.getsourcefile(build_detector)).parent.glob("*.py"))  # components/models
    files += [Path(__file__), Path(inspect.getsourcefile(slice_dataset)), Path(inspect.getsourcefile(augment))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def training_config(params: Params, model_changes: dict | None = None, train_changes: dict | None = None) -> dict:
    """What a training run of ``params`` (with changes to the detector's hyper-parameters or to
    train's settings) needs: the loop's config, without tracking. Fails fast on a bad param."""
    data_root = params.path(PROCESSED_DIR)
    read_index(data_root)  # a clear message when `preprocess` has not run
    name, settings = params.model.name, params.train.model_copy(update=train_changes or {})
    spec = PreprocessSpec.from_json(data_root / "preprocess_spec.json")
    hyperparams = {**params.model.hyperparams(), **(model_changes or {}),
                   **data_hyperparams(name, spec.size, spec.output_range)}
    build_detector(name, **hyperparams)
    return {
        "data_root": str(data_root), "model_name": name, "hyperparams": hyperparams, "train": settings.model_dump(),
        "fingerprint": data_fingerprint(data_root), "code": code_fingerprint(),
        "epochs": settings.epochs, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
        "seed": settings.seed, "threads": max(1, int(settings.cpus_per_worker)),
        "precision": settings.precision, "channels_last": settings.channels_last,
        "validation_auroc": settings.validation_auroc,
        "augment": settings.augment.model_dump(), "background": spec.background, "output_range": spec.output_range,
    }


def run_name(config: dict) -> str:
    """<detector>-<hash of detector, hyper-parameters, train settings, data and code>: equal inputs, equal name."""
    key = [config["model_name"], config["hyperparams"], config["train"], config["fingerprint"], config["code"]]
    return f"{config['model_name']}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"


def log_params(client, run_id: str, config: dict) -> None:
    values = {"model.name": config["model_name"], **flatten("model", config["hyperparams"]),
              **flatten("train", config["train"]), "data.fingerprint": config["fingerprint"],
              "code.fingerprint": config["code"]}
    for key, value in values.items():
        client.log_param(run_id, key, value)


def make_trainer(config: dict, name: str, storage_path: str, datasets: dict | None = None, callbacks=()) -> TorchTrainer:
    """The Ray Train run of ``config``: workers as train's settings say, checkpoints in
    ``storage_path``/``name``, surviving train.max_failures worker failures."""
    settings = config["train"]
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=settings["num_workers"], use_gpu=use_gpu(settings["use_gpu"]),
                                     resources_per_worker={"CPU": settings["cpus_per_worker"]}),
        datasets=datasets or training_datasets(Path(config["data_root"]), config["model_name"], config["validation_auroc"]),
        dataset_config=DataConfig(datasets_to_split=["train", "unlabelled"]),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=settings["max_failures"])),
    )


def run(params: Params) -> dict:
    config = training_config(params)
    name = run_name(config)
    run_id = tracking.training_run(params, name)
    client = tracking.client(params)
    log_params(client, run_id, config)
    config |= {"tracking_uri": tracking.tracking_uri(params), "mlflow_run_id": run_id}
    try:
        with ray_session():
            result = fit(make_trainer(config, name, params.storage(params.train.storage_path)))
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # a rerun with the same inputs picks this run up again
        raise
    client.set_terminated(run_id)
    return export_model(params, result.checkpoint, run_id, name, config["hyperparams"], result.metrics or {})


def fit(trainer: TorchTrainer):
    """``trainer.fit()``, with a worker's ValueError (a problem with the params or the data that
    only shows on the workers) raised as itself, its message on one line, not a worker traceback."""
    try:
        return trainer.fit()
    except WorkerGroupError as err:
        for failure in err.worker_failures.values():
            cause = getattr(failure, "cause", None) or failure  # Ray wraps the worker's exception
            if isinstance(cause, ValueError):
                raise ValueError(str(cause.args[0]) if cause.args else str(cause)) from None
        raise


def training_datasets(data_root: Path, model_name: str, validation_auroc: bool = False) -> dict:
    """Healthy train and val slices; the tumour cohort's training split for a detector that
    learns from unlabelled scans too, and its val split when the AUROC is tracked."""
    datasets = {
        "train": slice_dataset(data_root, "healthy", "train").randomize_block_order(),
        "val": slice_dataset(data_root, "healthy", "val"),
    }
    if DETECTORS[model_name].uses_unlabelled:
        datasets["unlabelled"] = slice_dataset(data_root, "tumour", "train")
    if validation_auroc:
        datasets["tumour_val"] = slice_dataset(data_root, "tumour", "val")
    return datasets


def export_model(
    params: Params, checkpoint: Checkpoint, run_id: str, run_name: str, hyperparams: dict, metrics: dict
) -> dict:
    """Write the trained weights and what built them to models/detector (the stage's output)."""
    if checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} produced no checkpoint")
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
    out = params.path(MODEL_DIR)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state["model"], out / "weights.pt")
    summary = {
        "model_name": params.model.name, "hyperparams": hyperparams,
        "epochs_trained": state["epoch"] + 1, "mlflow_run_id": run_id, "ray_run_name": run_name,
        "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    (out / "detector.json").write_text(json.dumps(summary, indent=2))
    return summary
