"""`brainomaly <command>`: one command per pipeline stage, plus `serve`. dvc.yaml calls these."""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import time
from pathlib import Path

import typer
from rich.console import Console

from pipelines.errors import StageError
from pipelines.params import ParamsError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True, soft_wrap=True)
PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (paths inside are relative to it)")
API_KEY_VARIABLE = "BRAINOMALY_API_KEY"
SET_OPTION = typer.Option([], "--set", "-S", help="change a param for this run: section.key=value (repeatable)")


@app.callback()
def options(verbose: bool = typer.Option(False, "--verbose", "-v", help="also show the logs of Ray's workers and actors")) -> None:
    """Options before the command, for every command."""
    if verbose:
        from pipelines.ray_cluster import VERBOSE_VARIABLE  # Ray is imported by the commands that use it

        os.environ[VERBOSE_VARIABLE] = "1"  # read by ray_session, in this process and in compare's children


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
    except KeyboardInterrupt:  # train and tune say more, as a StageError: they resume
        console.print(f"[bold red]brainomaly {module}: interrupted before it finished; run it again")
        raise typer.Exit(130) from None
    console.print(f"[bold green]{module}[/] done in {time.perf_counter() - start:.1f} s")
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def phantoms(params_file: Path = PARAMS_OPTION) -> None:
    """Write synthetic HCP (healthy) and BraTS (tumour) subjects built on the MNI152 template."""
    _run_stage("phantoms", params_file)


@app.command()
def preprocess(params_file: Path = PARAMS_OPTION) -> None:
    """Reorient, mask, normalise, select and resize slices; split by subject; write shards + index."""
    _run_stage("preprocess", params_file)


@app.command()
def validate(params_file: Path = PARAMS_OPTION) -> None:
    """Great-expectations gate over the processed slices; exits non-zero on any violation."""
    _run_stage("validate", params_file)


@app.command()
def train(params_file: Path = PARAMS_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """Train the detector on healthy slices with Ray Train (DDP), tracked in MLflow."""
    _run_stage("train", params_file, overrides)


@app.command()
def evaluate(params_file: Path = PARAMS_OPTION) -> None:
    """Slice- and pixel-wise metrics on the test split; thresholds from healthy validation slices."""
    _run_stage("evaluate", params_file)


@app.command()
def sites(params_file: Path = PARAMS_OPTION) -> None:
    """The model on every site's held-out scans: at the deployed thresholds and after site calibration."""
    _run_stage("sites", params_file)


@app.command()
def calibrate(
    site: str = typer.Option(..., "--site", help="the site's name: ?site=NAME on the endpoint applies its calibration"),
    healthy: Path = typer.Option(..., "--healthy", help="the site's healthy scans: any supported layout or a folder of .nii/.nii.gz"),
    allow_few_scans: bool = typer.Option(False, "--allow-few-scans",
                                         help="calibrate with fewer than calibrate.min_scans scans (their guarantee is stated)"),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Thresholds for a site from its own healthy scans, stored with the served model; the site is
    listed in sites.yaml, so every model registered later is calibrated for it too."""
    _run_stage("calibrate", params_file, site=site, healthy=healthy, allow_few_scans=allow_few_scans)


@app.command()
def register(params_file: Path = PARAMS_OPTION) -> None:
    """Log the self-describing model to MLflow, register it, move the alias if it wins."""
    _run_stage("register", params_file)


@app.command()
def compare(
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    only: list[str] = typer.Option([], "--only", help="rerun this detector alone, keeping the others' rows (repeatable)"),
    rescore: bool = typer.Option(False, "--rescore", help="evaluate the models already trained again (today's "
                                                          "evaluate settings), without training"),
) -> None:
    """Train and evaluate every detector of compare.detectors; write the comparison tables."""
    _run_stage("compare", params_file, overrides, only=only or None, rescore=rescore)


@app.command()
def tune(params_file: Path = PARAMS_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """Ray Tune sweep over the detector's loss weights and latent sizes; registers the best if it wins."""
    _run_stage("tune", params_file, overrides)


@app.command()
def oneclass(
    params_file: Path = PARAMS_OPTION,
    data: Path = typer.Option(None, help=".npz with images (N, H, W) and labels (N,); default: scikit-learn's digits"),
) -> None:
    """One-class novelty: per class, train on it alone and score every test image (AUROC)."""
    _run_stage("oneclass", params_file, data=data)


@app.command()
def serve(
    params_file: Path = PARAMS_OPTION,
    port: int = typer.Option(None, help="HTTP port (default: serve.port of params)"),
    model_uri: str = typer.Option(None, help="MLflow model URI (default: models:/<name>@<alias>, followed as it moves)"),
    allow_no_key: bool = typer.Option(False, "--allow-no-key",
                                      help="serve on a non-loopback address without BRAINOMALY_API_KEY"),
) -> None:
    """Serve the champion model over HTTP with Ray Serve until interrupted.

    Set BRAINOMALY_API_KEY to require that key in the X-API-Key header of every request but the
    probes (and /metrics unless serve.metrics_require_key).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.tracking import tracking_uri
    from pipelines.model_store import ModelNotFoundError
    from components.data.nifti_io import VolumeLimits
    from serving.run import serve_forever  # Ray Serve is heavy: import only for this command
    from serving.settings import EndpointSettings

    try:
        params = load_params(params_file)
        key = os.environ.get(API_KEY_VARIABLE) or None
        if key is None and not allow_no_key and not is_loopback(params.serve.host):
            raise ValueError(f"serve.host {params.serve.host} is reachable from other machines: set {API_KEY_VARIABLE}, "
                             "or pass --allow-no-key to serve it unauthenticated")
        settings = EndpointSettings(
            model_uri=model_uri or (f"models:/{params.registry.model_name}/{params.serve.model_version}" if params.serve.model_version
                                    else f"models:/{params.registry.model_name}@{params.registry.alias}"),
            tracking_uri=tracking_uri(params), max_upload_bytes=int(params.serve.max_upload_mb * 2**20),
            limits=VolumeLimits(params.serve.max_voxels, params.serve.max_axis),
            registry_poll_s=params.serve.registry_poll_s, upload_timeout_s=params.serve.upload_timeout_s,
            predict_timeout_s=params.serve.predict_timeout_s, batch_volumes=params.serve.volumes_per_pass(),
            batch_wait_s=params.serve.batch_wait_s, api_key=key, metrics_require_key=params.serve.metrics_require_key,
            drift=params.serve.drift, min_component_voxels=params.evaluate.min_component_voxels,
            thin_slices=params.serve.thin_slices,
        )
        serve_forever(settings, host=params.serve.host, port=port or params.serve.port, deployment_options=params.serve.deployment_options(),
                      route_prefix=params.serve.route_prefix,
                      spill_to=params.path(params.serve.spill_directory) if params.serve.spill_directory else None)
    except (ParamsError, ModelNotFoundError, ValueError, FileNotFoundError) as err:
        console.print(f"[bold red]brainomaly serve: {err}")
        raise typer.Exit(1) from None


@app.command()
def score(
    input: Path = typer.Option(..., "--input", "-i", help="an archive: a dataset layout, or folders of NIfTI files and DICOM series"),
    output: Path = typer.Option(..., "--output", "-o", help="where the results go (a rerun skips what is there)"),
    params_file: Path = PARAMS_OPTION,
    layout: str = typer.Option("auto", help="the archive's layout (auto: a release's layout, else every scan below)"),
    modality: str = typer.Option(None, help="for a dataset layout: which modality (default: data.modality)"),
    model_uri: str = typer.Option(None, help="MLflow model URI (default: models:/<name>@<alias>)"),
    site: str = typer.Option(None, help="verdicts at this site's calibration (`brainomaly calibrate --site`)"),
    maps: bool = typer.Option(False, "--maps", help="also write each scan's anomaly map as NIfTI, in OUTPUT/maps"),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Score every scan of an archive with the registered model on Ray Data: verdicts and
    per-slice scores as parquet, unreadable scans listed with the reason. Ctrl+C stops cleanly:
    the same command goes on from there."""
    _run_stage("score", params_file, overrides, input=input, output=output, layout=layout, modality=modality,
               model_uri=model_uri, site=site, maps=maps)


@app.command("pacs-watch")
def pacs_watch(
    params_file: Path = PARAMS_OPTION,
    once: bool = typer.Option(False, "--once", help="handle what the change feed holds, then stop"),
) -> None:
    """Follow a PACS: score each new stable brain MR series and store its DICOM SEG in its study.

    Needs a running endpoint (`brainomaly serve`). BRAINOMALY_PACS_USER and BRAINOMALY_PACS_PASSWORD
    give the PACS's credentials, BRAINOMALY_API_KEY the endpoint's key. Ctrl+C stops it cleanly:
    the next start goes on where it stopped.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from components.pacs.orthanc import Orthanc, PacsError
    from components.pacs.watch import EndpointUnavailable, Watcher, WatchError

    try:
        params = load_params(params_file)
        settings = params.pacs
        user, password = os.environ.get("BRAINOMALY_PACS_USER"), os.environ.get("BRAINOMALY_PACS_PASSWORD", "")
        pacs = Orthanc(settings.url, (user, password) if user else None, settings.timeout_s)
        endpoint = settings.endpoint or f"http://{params.serve.host}:{params.serve.port}"
        watcher = Watcher(pacs, settings, endpoint, params.path(settings.state_file), os.environ.get(API_KEY_VARIABLE))
        outcomes = watcher.run(once=once)
    except (ParamsError, PacsError, WatchError, EndpointUnavailable) as err:
        console.print(f"[bold red]brainomaly pacs-watch: {err}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("brainomaly pacs-watch: stopped; the next start goes on from where it stopped")
        raise typer.Exit(130) from None
    counts = {status: sum(o.status == status for o in outcomes) for status in ("scored", "skipped", "done before")}
    typer.echo(json.dumps(counts))


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost may resolve anywhere)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("drift-demo")
def drift_demo(
    params_file: Path = PARAMS_OPTION,
    url: str = typer.Option(None, help="a running endpoint (default: http://<serve.host>:<serve.port>)"),
    shift: str = typer.Option("contrast", help="contrast (the other modality), bias_field, gamma, rescale or low_resolution"),
) -> None:
    """Send healthy scans, then shifted ones, to a running endpoint and print its drift gauges.

    Each phase sends serve.drift.window slices, so the shifted phase's window is all shifted.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import requests
    from rich.table import Table

    from serving.drift_demo import check_shift, drill_scans, run_drill

    try:
        check_shift(shift)
        params = load_params(params_file)
        subjects, other = drill_scans(params, shift)
        phases = run_drill(url or f"http://{params.serve.host}:{params.serve.port}", subjects, window=params.serve.drift.window,
                           shift=shift, other_contrast=other, api_key=os.environ.get(API_KEY_VARIABLE) or None)
    except (ParamsError, ValueError, FileNotFoundError, RuntimeError, requests.RequestException) as err:
        console.print(f"[bold red]brainomaly drift-demo: {err}")
        raise typer.Exit(1) from None
    table = Table("phase", "slices sent", "PSI", "KS", "W1", "above threshold", "expected", title="Score drift")
    for phase in phases:
        gauges = phase.gauges
        table.add_row(phase.name, str(phase.slices_sent), *(f"{gauges.get(k, float('nan')):.3f}" for k in
                      ("psi", "ks", "wasserstein", "fraction_above", "expected_fraction_above")))
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
