"""`brainomaly tune`: a Ray Tune sweep over the chosen detector's loss weights, latent sizes and
learning rate, each trial a Ray Train run of the ordinary training loop (Ray Train inside Tune).

- Search space: ``tune.space.<detector>`` in params.yaml, each key a hyper-parameter of the
  detector (or train's learning_rate / batch_size) with a sampler: loguniform, uniform, choice
  or randint. Optuna (TPE, seeded) proposes trials; ASHA stops weak ones early on
  ``tune.metric`` (``val_slice_auroc``: the slice AUROC on the tumour cohort's val split, every
  epoch).
- Bounded concurrency: no more trials at once than the cluster's CPUs (or GPUs) hold trial
  workers, and a trial's own driver asks for no CPU, so a sweep cannot starve its training
  workers of resources (the placement-group deadlock of Ray issue #54305): it reserves 64 MiB
  of memory and no CPU (Ray refuses an empty request).
- Tracking: one MLflow parent run per sweep, a child run per trial (params, curves); the
  results table is reports/tune.{md,json} (DVC metrics) and an artifact of the parent run.
- The best trial's model is evaluated with the full protocol and offered to the registry
  through the ordinary `evaluate` and `register` stages, in the workspace artifacts/tune/best/
  (the `champion` alias moves only if it wins).
- Resume: the sweep's folder is named by a hash of its settings; rerun after an interruption,
  it is restored (``Tuner.restore``) and finished trials are not run again. An interrupted
  sweep (Ctrl+C: Tune saves its state and returns) is an error, never a partial result
  evaluated and registered as if it were the sweep's.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from components.atomic import write_json, write_text
from components.models.registry import accepted_hyperparams
from pipelines import tracking, train
from pipelines.errors import StageError
from pipelines.params import Params, load_params
from pipelines.ray_cluster import ray_session, use_gpu
from pipelines.workspace import create, run_stage

REPORT_JSON = Path("reports/tune.json")
REPORT_MD = Path("reports/tune.md")
BEST_WORKSPACE = Path("artifacts/tune/best")
# A trial's driver only waits on its Ray Train run, whose workers hold the CPUs: it reserves a
# little memory and no CPU (even a fraction of one would keep a one-CPU node from a worker).
TRIAL_DRIVER = {"memory": 64 * 2**20}


def search_space(params: Params) -> dict:
    """The chosen detector's space from params.yaml as Ray Tune samplers."""
    space = params.tune.space.get(params.model.name)
    if not space:
        raise ValueError(f"tune.space has no entry for model.name {params.model.name!r}: add one (docs/training.md \"Tuning\")")
    samplers = {"loguniform": lambda v: tune.loguniform(*v), "uniform": lambda v: tune.uniform(*v),
                "choice": tune.choice, "randint": lambda v: tune.randint(v[0], v[1] + 1)}
    return {key: samplers[kind](values) for key, sampler in space.items() for kind, values in sampler.items()}


def concurrency(params: Params) -> int:
    """At most tune.max_concurrent_trials, and no more trials than the cluster can hold at once."""
    settings, gpu = params.train, use_gpu(params.train.use_gpu)
    if gpu:
        room = ray.cluster_resources().get("GPU", 0) // params.tune.workers_per_trial
    else:
        room = ray.cluster_resources().get("CPU", 0) // (params.tune.workers_per_trial * settings.cpus_per_worker)
    if room < 1:
        raise ValueError(f"the Ray cluster cannot hold one trial of {params.tune.workers_per_trial} worker(s) "
                         f"({'GPU' if gpu else f'{settings.cpus_per_worker} CPU'} each)")
    return int(min(params.tune.max_concurrent_trials, room))


def split_sampled(model_name: str, sampled: dict) -> tuple[dict, dict]:
    """A trial's sampled values as (detector hyper-parameters, train settings): a key the
    detector takes is its own (its learning_rate overrides train's), any other is train's."""
    own = accepted_hyperparams(model_name)
    return ({k: v for k, v in sampled.items() if k in own}, {k: v for k, v in sampled.items() if k not in own})


def apply(base: train.TrainingConfig, sampled: dict) -> train.TrainingConfig:
    """The sweep's training config with a trial's sampled values."""
    model, settings = split_sampled(base.model_name, sampled)
    return base.with_changes(model=model, train=settings)


@dataclass(frozen=True)
class Sweep:
    """What every trial of a sweep shares besides its training config: names and tracking."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    train_storage: str


def trial(sampled: dict, base: train.TrainingConfig, sweep: Sweep, datasets: dict) -> None:
    """One trial, in its own Ray actor: a Ray Train run reporting every epoch to Tune, tracked
    as a child of the sweep's MLflow run."""
    config = apply(base, sampled)
    name = f"{sweep.name}-{tune.get_context().get_trial_id()}"
    client = MlflowClient(sweep.tracking_uri)
    run_id = tracking.run_for(client, sweep.experiment_id, "ray_run_name", name, name)
    client.set_tag(run_id, "mlflow.parentRunId", sweep.parent_run_id)
    train.log_params(client, run_id, config)
    train.fit(train.make_trainer(config, name, sweep.train_storage, train.Tracking(sweep.tracking_uri, run_id), datasets,
                                 callbacks=[TuneReportCallback()]))
    client.set_terminated(run_id)


def sweep_config(params: Params) -> train.TrainingConfig:
    """The training config every trial starts from: tune's epochs and workers, val AUROC on."""
    settings = params.tune
    return train.training_config(params).with_changes(
        train={"epochs": settings.epochs, "num_workers": settings.workers_per_trial, "validation_auroc": True})


def sweep_name(params: Params, base: train.TrainingConfig) -> str:
    key = [base.identity(), params.tune.model_dump(exclude={"storage_path"})]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"sweep-{base.model_name}-{digest}"


def run(params: Params) -> dict:
    settings = params.tune
    base = sweep_config(params)
    space = search_space(params)
    name = sweep_name(params, base)
    client = tracking.client(params)
    experiment = tracking.experiment_id(params)
    parent = tracking.run_for(client, experiment, "tune_sweep", name, name)
    sweep = Sweep(name, tracking.tracking_uri(params), experiment, parent, params.storage(params.train.storage_path))
    with ray_session():
        datasets = train.training_datasets(base)
        trainable = tune.with_resources(tune.with_parameters(trial, base=base, sweep=sweep, datasets=datasets),
                                        TRIAL_DRIVER)
        results, interrupted = fit(tuner(params, trainable, space, name))
    if interrupted:
        raise StageError(f"sweep {name} was interrupted: run `brainomaly tune` again to resume it "
                         "(finished trials are kept)")
    table = results_table(results, list(space), settings.metric)
    if table.empty or table[settings.metric].isna().all():
        raise StageError(f"sweep {name}: no trial reported {settings.metric}")
    _write(params, name, table)
    client.log_artifact(parent, str(params.path(REPORT_MD)))
    client.log_artifact(parent, str(params.path(REPORT_JSON)))
    best = results.get_best_result(settings.metric, settings.mode, scope="last", filter_nan_and_inf=True)
    client.log_metric(parent, f"best_{settings.metric}", float(best.metrics[settings.metric]))
    client.set_terminated(parent)
    registered = evaluate_and_register(params, best, list(space), f"{name}-{best.metrics['trial_id']}")
    return {"sweep": name, "trials": len(table), "best": table.iloc[0].to_dict(), "registration": registered,
            "adopt": adopt_command(params, best.config, list(space))}


def fit(tuner: tune.Tuner) -> tuple[tune.ResultGrid, bool]:
    """The sweep's results, and whether Ctrl+C stopped it. Tune then saves the sweep, marks the
    trials it stops as terminated and returns as if it had finished; what tells is that it hands
    Ctrl+C back to the handler it found, here ``interrupted``."""
    if threading.current_thread() is not threading.main_thread():  # no signals off the main thread
        return tuner.fit(), False

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        results = tuner.fit()
        return results, signal.getsignal(signal.SIGINT) is interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def adopt_command(params: Params, config: dict, keys: list[str]) -> str:
    """The `dvc exp run` that makes the best trial's values the pipeline's own, as a DVC experiment."""
    model, _ = split_sampled(params.model.name, {k: config[k] for k in keys})
    sections = {k: f"model.{params.model.name}" if k in model else "train" for k in keys}
    return "dvc exp run " + " ".join(f"-S {sections[k]}.{k}={config[k]}" for k in keys)


def tuner(params: Params, trainable, space: dict, name: str) -> tune.Tuner:
    """A new Tuner, or the interrupted sweep of the same name restored (finished trials kept)."""
    settings = params.tune
    path = f"{params.storage(settings.storage_path).rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(metric=settings.metric, mode=settings.mode, seed=settings.seed)
    else:
        search = None
    scheduler = (ASHAScheduler(max_t=settings.epochs, grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, search_alg=search, scheduler=scheduler,
                                    num_samples=settings.num_samples, max_concurrent_trials=concurrency(params)),
        run_config=tune.RunConfig(name=name, storage_path=params.storage(settings.storage_path),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures)),
    )


def results_table(results, keys: list[str], metric: str) -> pd.DataFrame:
    """One row per trial: its sampled values, epochs run, last metrics or error; best first."""
    rows = [{"trial": r.metrics.get("trial_id") if r.metrics else None, **{k: r.config.get(k) for k in keys},
             "epochs": (r.metrics or {}).get("training_iteration"),
             **{k: (r.metrics or {}).get(k) for k in dict.fromkeys((metric, "val_slice_auroc", "val_loss", "train_loss"))},
             "error": str(r.error).splitlines()[0] if r.error else None}
            for r in results]
    table = pd.DataFrame(rows)
    return table.sort_values(metric, ascending=False, na_position="last", ignore_index=True) if rows else table


def _write(params: Params, name: str, table: pd.DataFrame) -> None:
    write_json(params.path(REPORT_JSON), {"sweep": name, "trials": json.loads(table.to_json(orient="records"))})
    write_text(params.path(REPORT_MD), f"Sweep {name} ({len(table)} trials, best first)\n\n"
                                      f"{table.to_markdown(index=False, floatfmt='.4g')}\n")


def evaluate_and_register(params: Params, best, keys: list[str], train_name: str) -> dict:
    """The best trial's last checkpoint as the model of the workspace artifacts/tune/best/, then
    its `evaluate` (test metrics onto the trial's MLflow run) and `register` (the promotion gate)."""
    model_changes, train_changes = split_sampled(params.model.name, {k: best.config[k] for k in keys})
    folder = create(params, BEST_WORKSPACE, {"model": {params.model.name: model_changes}, "train": train_changes})
    config = train.training_config(params).with_changes(model=model_changes)
    run_id = tracking.training_run(params, train_name)
    train.export_model(load_params(folder / "params.yaml"), ray.train.Checkpoint(best.metrics[CHECKPOINT_PATH_KEY]),
                       run_id, train_name, config.hyperparams,
                       {k: v for k, v in best.metrics.items() if isinstance(v, (int, float))})
    run_stage("evaluate", folder, params)
    run_stage("register", folder, params)
    return json.loads((folder / "reports" / "registration.json").read_text())
