"""`brainomaly <command>`: one command per pipeline stage, plus `serve`. dvc.yaml calls these."""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path

import typer
from rich.console import Console

from pipelines.errors import StageError
from pipelines.params import ParamsError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True, soft_wrap=True)
PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (paths inside are relative to it)")
SET_OPTION = typer.Option([], "--set", "-S", help="change a param for this run: section.key=value (repeatable)")


def _run_stage(module: str, params_path: Path, overrides: list[str] = (), **options) -> None:
    """Load params, run ``pipelines.<module>.run`` and print what it did; user errors exit 1 with one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        params = load_params(params_path, overrides)
        summary = importlib.import_module(f"pipelines.{module}").run(params, **options)
    except (ParamsError, StageError, FileNotFoundError, ValueError) as err:
        console.print(f"[bold red]brainomaly {module}: {err}")
        raise typer.Exit(1) from None
    console.print(f"[bold green]{module}[/] done in {time.perf_counter() - start:.1f} s")
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def phantoms(params: Path = PARAMS_OPTION) -> None:
    """Write synthetic HCP (healthy) and BraTS (tumour) subjects built on the MNI152 template."""
    _run_stage("phantoms", params)


@app.command()
def preprocess(params: Path = PARAMS_OPTION) -> None:
    """Reorient, mask, normalise, select and resize slices; split by subject; write shards + index."""
    _run_stage("preprocess", params)


@app.command()
def validate(params: Path = PARAMS_OPTION) -> None:
    """Great-expectations gate over the processed slices; exits non-zero on any violation."""
    _run_stage("validate", params)


@app.command()
def train(params: Path = PARAMS_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """Train the detector on healthy slices with Ray Train (DDP), tracked in MLflow."""
    _run_stage("train", params, overrides)


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Slice- and pixel-wise metrics on the test split; thresholds from healthy validation slices."""
    _run_stage("evaluate", params)


@app.command()
def register(params: Path = PARAMS_OPTION) -> None:
    """Log the self-describing model to MLflow, register it, move the alias if it wins."""
    _run_stage("register", params)


@app.command()
def compare(
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    only: list[str] = typer.Option([], "--only", help="rerun this detector alone, keeping the others' rows (repeatable)"),
) -> None:
    """Train and evaluate every detector of compare.detectors; write the comparison tables."""
    _run_stage("compare", params, overrides, only=only or None)


@app.command()
def tune(params: Path = PARAMS_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """Ray Tune sweep over the detector's loss weights and latent sizes; registers the best if it wins."""
    _run_stage("tune", params, overrides)


@app.command()
def oneclass(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(None, help=".npz with images (N, H, W) and labels (N,); default: scikit-learn's digits"),
) -> None:
    """One-class novelty: per class, train on it alone and score every test image (AUROC)."""
    _run_stage("oneclass", params, data=data)


@app.command()
def serve(
    params: Path = PARAMS_OPTION,
    port: int = typer.Option(None, help="HTTP port (default: serve.port of params)"),
    model_uri: str = typer.Option(None, help="MLflow model URI (default: models:/<name>@<alias>)"),
) -> None:
    """Serve the champion model over HTTP with Ray Serve until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.tracking import tracking_uri
    from serving.model_source import ModelNotFoundError
    from serving.run import serve_forever  # Ray Serve is heavy: import only for this command

    try:
        p = load_params(params)
        serve_forever(
            host=p.serve.host, port=port or p.serve.port,
            model_uri=model_uri or f"models:/{p.registry.model_name}@{p.registry.alias}",
            tracking_uri=tracking_uri(p), max_upload_mb=p.serve.max_upload_mb, num_replicas=p.serve.num_replicas,
        )
    except (ParamsError, ModelNotFoundError, ValueError, FileNotFoundError) as err:
        console.print(f"[bold red]brainomaly serve: {err}")
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
