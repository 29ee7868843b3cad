"""Stage `train`: the detector on healthy training slices, with Ray Train's TorchTrainer.

Each worker runs the Ray-free loop of components/training: whatever its networks, a detector
trains through its own ``train_step``, its gradients averaged across workers before each
optimizer step and its BatchNorm statistics at each epoch's end, on the training device (gloo
on CPUs, NCCL on GPUs). Slices reach the workers as Ray Datasets (``train.get_dataset_shard``),
split between workers each epoch, so a worker on another node needs no copy of the processed
data. A detector that learns
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
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import ray.train
import ray.train.torch
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, Result, RunConfig,
                       ScalingConfig, WorkerGroupError)
from ray.train.torch import TorchTrainer

from components.atomic import atomic_path, write_json
from components.data.augment import augment
from components.data.slice_store import processed_fingerprint, read_index
from components.models.detector import Slices
from components.models.registry import DETECTORS, build_detector, contrast_residual, data_hyperparams
from components.preprocess.spec import PreprocessSpec
from components.training.loop import LoopData, LoopSettings, prepare, run_epochs
from pipelines import tracking
from pipelines.errors import StageError
from pipelines.params import Params, TrainParams
from pipelines.preprocess import PROCESSED_DIR
from pipelines.ray_cluster import ray_session, use_gpu
from pipelines.slice_datasets import slice_dataset

log = logging.getLogger(__name__)
MODEL_DIR = Path("models/detector")
STATE_FILE = "state.pt"
CHECKPOINTS_KEPT = 2  # the latest epochs' checkpoints in storage_path; older ones are deleted
SHUFFLE_BATCHES = 8  # each worker shuffles within a buffer of this many batches (block order is random too)


def shard_batches(name: str, batch_size: int, device: torch.device, **options):
    """A callable starting a new pass over this worker's shard of dataset ``name``."""
    shard = ray.train.get_dataset_shard(name)
    return lambda: shard.iter_torch_batches(batch_size=batch_size, device=device, **options)


def unlabelled_batches(batch_size: int, device: torch.device) -> list[Slices]:
    """This worker's share of the unlabelled slices, read once and kept (they are few); every
    worker reads its whole shard, so the split dataset is consumed in step."""
    batches = [Slices(b["image"], b["brain"]) for b in shard_batches("unlabelled", batch_size, device, drop_last=True)()]
    if not batches:
        raise ValueError(f"a worker got fewer than one batch ({batch_size}) of unlabelled tumour-cohort training slices: "
                         "add tumour scans or lower train.batch_size")
    return batches


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run depends on, each value once: the detector and its full
    hyper-parameters (params, a sweep's sampled values and what the data imply), train's
    settings, the label validation AUROC uses, and the content hashes of the data and code.
    Equal configs train equal runs (``run_name``); a trial is the sweep's config ``with_changes``."""

    data_root: str
    model_name: str
    hyperparams: dict
    train: TrainParams
    min_tumour_pixels: int  # evaluate's slice label, for val_slice_auroc
    background: float
    output_range: tuple[float, float] | None
    data_fingerprint: str
    code_fingerprint: str

    def with_changes(self, model: dict | None = None, train: dict | None = None) -> "TrainingConfig":
        """This config with some hyper-parameters and train settings replaced (validated)."""
        hyperparams = {**self.hyperparams, **(model or {})}
        build_detector(self.model_name, **hyperparams)  # a clear error for a bad value
        settings = TrainParams.model_validate({**self.train.model_dump(), **(train or {})})
        return replace(self, hyperparams=hyperparams, train=settings)

    def identity(self) -> dict:
        """What decides the trained weights (not where the data lie)."""
        values = asdict(self) | {"train": self.train.model_dump(mode="json")}
        values.pop("data_root")
        if not self.train.validation_auroc:
            values.pop("min_tumour_pixels")
        return values


@dataclass(frozen=True)
class Tracking:
    """Where a worker logs its epochs: the MLflow store and run (none for an untracked run)."""

    tracking_uri: str | None = None
    run_id: str | None = None


def loop_settings(config: TrainingConfig, rank: int) -> LoopSettings:
    settings = config.train
    return LoopSettings(epochs=planned_epochs(config), precision=settings.precision,
                        channels_last=settings.channels_last, augment=settings.augment, background=config.background,
                        output_range=config.output_range, seed=settings.seed + rank)


def planned_epochs(config: TrainingConfig) -> int:
    """train.epochs, or one pass for a detector with nothing to learn (it logs its validation metrics)."""
    return config.train.epochs if DETECTORS[config.model_name].trainable else 1


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: the Ray-free loop (components/training) fed with this
    worker's dataset shards, reporting each epoch (and on rank 0 a checkpoint) to Ray Train.
    ``loop_config`` holds the TrainingConfig and its Tracking."""
    config, tracked = loop_config["config"], loop_config["tracking"]
    settings = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
    device = ray.train.torch.get_device()

    torch.manual_seed(settings.seed)  # the same initial weights on every worker
    detector = build_detector(config.model_name, **config.hyperparams)
    torch.manual_seed(settings.seed + rank)  # different noise and augmentation per worker
    state = None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    loop = loop_settings(config, rank)
    optimizers, start_epoch = prepare(detector, settings.learning_rate, device, loop, state)

    batch_size = max(1, settings.batch_size // world)
    data = LoopData(
        train=shard_batches("train", batch_size, device, drop_last=True,
                            local_shuffle_buffer_size=SHUFFLE_BATCHES * batch_size),
        val=shard_batches("val", 64, device) if rank == 0 else None,
        tumour_val=shard_batches("tumour_val", 64, device) if rank == 0 and settings.validation_auroc else None,
        unlabelled=unlabelled_batches(batch_size, device) if detector.uses_unlabelled else None,
    )

    def report(metrics: dict, state: dict | None) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        _log_epoch(tracked, metrics, metrics["epoch"])
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    run_epochs(detector, optimizers, data, loop, device, report, start_epoch)


def _log_epoch(tracked: Tracking, metrics: dict, epoch: int) -> None:
    """The epoch's metrics on the run's MLflow run (none for an untracked run, e.g. a benchmark)."""
    if tracked.run_id is None:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    stamp = int(1000 * time.time())
    MlflowClient(tracked.tracking_uri).log_batch(
        tracked.run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items() if k != "epoch"]
    )


def flatten(prefix: str, values: dict) -> dict:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}: nested params as flat MLflow param names."""
    flat = {}
    for key, value in values.items():
        flat.update(flatten(f"{prefix}.{key}", value) if isinstance(value, dict) else {f"{prefix}.{key}": value})
    return flat


def code_fingerprint() -> str:
    """A short hash of the training code (detectors, augmentation, the loop, the datasets): a run
    resumes its checkpoint only when this code is unchanged, so a fix is trained, not skipped."""
    files = sorted(Path(inspect.getsourcefile(build_detector)).parent.glob("*.py"))  # components/models
    files += sorted(Path(inspect.getsourcefile(run_epochs)).parent.glob("*.py"))  # components/training
    files += [Path(__file__), Path(inspect.getsourcefile(slice_dataset)), Path(inspect.getsourcefile(augment))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def training_config(params: Params) -> TrainingConfig:
    """The training run ``params`` describe. Fails fast on a bad param or missing data."""
    data_root = params.path(PROCESSED_DIR)
    read_index(data_root)  # a clear message when `preprocess` has not run
    name = params.model.name
    spec = PreprocessSpec.from_json(data_root / "preprocess_spec.json")
    hyperparams = contrast_residual({**params.model.hyperparams(), **data_hyperparams(name, spec.size, spec.output_range)},
                                    params.data.modality)
    build_detector(name, **hyperparams)
    return TrainingConfig(
        data_root=str(data_root), model_name=name, hyperparams=hyperparams, train=params.train,
        min_tumour_pixels=params.evaluate.min_tumour_pixels, background=spec.background,
        output_range=spec.output_range, data_fingerprint=processed_fingerprint(data_root),
        code_fingerprint=code_fingerprint(),
    )


def run_name(config: TrainingConfig) -> str:
    """<detector>-<hash of detector, hyper-parameters, train settings, data content and code>:
    equal inputs, equal name (a rerun resumes it); rewritten shards, a new run."""
    key = json.dumps(config.identity(), sort_keys=True, default=str)
    return f"{config.model_name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def log_params(client, run_id: str, config: TrainingConfig) -> None:
    values = {"model.name": config.model_name, **flatten("model", config.hyperparams),
              **flatten("train", config.train.model_dump(mode="json")), "data.fingerprint": config.data_fingerprint,
              "code.fingerprint": config.code_fingerprint}
    for key, value in values.items():
        client.log_param(run_id, key, value)


def make_trainer(config: TrainingConfig, name: str, storage_path: str, tracked: Tracking = Tracking(),
                 datasets: dict | None = None, callbacks=()) -> TorchTrainer:
    """The Ray Train run of ``config``: workers as train's settings say, checkpoints in
    ``storage_path``/``name`` (the latest CHECKPOINTS_KEPT), surviving train.max_failures
    worker failures."""
    settings = config.train
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "tracking": tracked},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=use_gpu(settings.use_gpu),
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        datasets=datasets or training_datasets(config),
        dataset_config=DataConfig(datasets_to_split=["train", "unlabelled"]),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks),
                             checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                             failure_config=FailureConfig(max_failures=settings.max_failures),
                             logging_config=LoggingConfig(log_level="WARNING")),  # not every report of every rank
    )


def run(params: Params) -> dict:
    config = training_config(params)
    name = run_name(config)
    run_id = tracking.training_run(params, name)
    client = tracking.client(params)
    log_params(client, run_id, config)
    storage = params.storage(params.train.storage_path)
    try:
        with ray_session(), tracking.epoch_lines(client, run_id, planned_epochs(config), log.info):
            result = fit(make_trainer(config, name, storage, Tracking(tracking.tracking_uri(params), run_id)))
    except (KeyboardInterrupt, SystemExit):  # Ctrl+C: Ray Train's own handler aborts the run and exits
        client.set_terminated(run_id, "KILLED")  # a rerun with the same inputs resumes this run
        raise StageError(interrupted(config, storage, name)) from None
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # a rerun with the same inputs picks this run up again
        raise
    client.set_terminated(run_id)
    return export_model(params, result.checkpoint, run_id, name, config.hyperparams, result.metrics or {})


def interrupted(config: TrainingConfig, storage: str, name: str) -> str:
    """What a Ctrl+C left: the epochs of the latest checkpoint Ray Train registered, where a rerun resumes."""
    epochs = planned_epochs(config)
    try:
        latest = Result.from_path(f"{storage.rstrip('/')}/{name}")
    except (RuntimeError, OSError, ValueError):  # no checkpoint registered yet, or storage unreadable now
        latest = None
    if latest is None or latest.checkpoint is None:
        return f"interrupted before the first of {epochs} epochs was checkpointed; run it again to start over"
    done = int(latest.metrics["epoch"]) + 1
    return f"interrupted after {done} of {epochs} epochs; their checkpoint is kept: run it again to resume"


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


def training_datasets(config: TrainingConfig) -> dict:
    """Healthy train and val slices; the tumour cohort's training split for a detector that
    learns from unlabelled scans too, and its val split, labelled, when the AUROC is tracked."""
    root = Path(config.data_root)
    datasets = {
        "train": slice_dataset(root, "healthy", "train").randomize_block_order(),
        "val": slice_dataset(root, "healthy", "val"),
    }
    if DETECTORS[config.model_name].uses_unlabelled:
        datasets["unlabelled"] = slice_dataset(root, "tumour", "train")
    if config.train.validation_auroc:
        datasets["tumour_val"] = slice_dataset(root, "tumour", "val", config.min_tumour_pixels)
    return datasets


def export_model(
    params: Params, checkpoint: Checkpoint, run_id: str, run_name: str, hyperparams: dict, metrics: dict
) -> dict:
    """Write the trained weights and what built them to models/detector (the stage's output),
    each file atomically: a stage killed here leaves the previous model or the new one."""
    if checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} produced no checkpoint")
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    out = params.path(MODEL_DIR)
    with atomic_path(out / "weights.pt") as tmp:
        torch.save(state["model"], tmp)
    summary = {
        "model_name": params.model.name, "hyperparams": hyperparams,
        "epochs_trained": state["epoch"] + 1, "mlflow_run_id": run_id, "ray_run_name": run_name,
        "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    write_json(out / "detector.json", summary)
    return summary
