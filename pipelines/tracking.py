"""MLflow set-up: a SQLite tracking store and registry inside the repo unless
``MLFLOW_TRACKING_URI`` names another (a server, a database)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from pipelines.params import Params

EXPERIMENT = "brainomaly"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# Read once, before any mlflow.set_tracking_uri(): MLflow exports the URI it is given to this
# variable (for subprocesses), after which a user's choice could not be told from our own.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(params: Params) -> str:
    return USER_TRACKING_URI or f"sqlite:///{params.path(DEFAULT_DB)}"


def client(params: Params) -> MlflowClient:
    """A client bound to the project's tracking store and registry (never MLflow's globals)."""
    uri = tracking_uri(params)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(params: Params) -> str:
    """Point MLflow at the project's store and return the experiment's id (created on first use)."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = None if USER_TRACKING_URI else params.path(DEFAULT_ARTIFACTS).as_uri()
    return mlflow.create_experiment(EXPERIMENT, artifact_location=location)


def training_run(params: Params, ray_run_name: str) -> str:
    """The MLflow run of a training, found by its tag in this store. A model pulled from a DVC
    remote may come from another store: then a run is created here for it."""
    return run_for(client(params), experiment_id(params), "ray_run_name", ray_run_name, ray_run_name)


def run_for(client: MlflowClient, experiment: str, key: str, value: str, run_name: str) -> str:
    """The id of the run tagged ``key=value`` (so a rerun resumes it), or of a new one."""
    found = client.search_runs([experiment], filter_string=f"tags.{key} = '{value}'", max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment, run_name=run_name, tags={key: value}).info.run_id


@contextlib.contextmanager
def epoch_lines(client: MlflowClient, run_id: str, epochs: int, say, every_s: float = 2.0) -> Iterator[None]:
    """While the block runs (training, on Ray's workers), ``say`` one line per epoch the run logs,
    read back from MLflow by a thread: the driver's console shows progress without the workers' logs."""
    shown = [_latest_epoch(client, run_id)]  # a resumed run's earlier epochs were shown when they ran
    stop = threading.Event()

    def show_new() -> None:
        try:
            histories = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
                         for key in client.get_run(run_id).data.metrics if key.startswith(("train_", "val_"))}
        except Exception:  # noqa: BLE001  a store busy for a moment: the next poll reads it
            return
        for epoch in sorted({step for values in histories.values() for step in values if step > shown[0]}):
            losses = ", ".join(f"{key} {values[epoch]:.4g}" for key, values in sorted(histories.items())
                               if epoch in values and not key.endswith("_per_s"))
            say(f"epoch {epoch + 1}/{epochs}: {losses}")
            shown[0] = epoch

    def watch() -> None:
        while not stop.wait(every_s):
            show_new()

    thread = threading.Thread(target=watch, name="epoch-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        show_new()


def _latest_epoch(client: MlflowClient, run_id: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, "train_slices_per_s")), default=-1)
