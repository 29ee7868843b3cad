"""`brainomaly oneclass`: the one-class novelty protocol (components/novelty/oneclass.py) for each
detector of ``oneclass.detectors``, on scikit-learn's digits or any ``--data FILE.npz``.

Writes reports/oneclass.json and reports/oneclass.md (rows = detectors, columns = the normal
class, as the latent-constrained paper's Table 1) and logs both to an MLflow run "oneclass".
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.atomic import write_text
from components.models.registry import build_detector, data_hyperparams
from components.novelty.oneclass import digits, prepare, read_npz, run_protocol
from pipelines import tracking
from pipelines.params import Params

REPORT_JSON = Path("reports/oneclass.json")
REPORT_MD = Path("reports/oneclass.md")


def run(params: Params, data: Path | None = None) -> dict:
    settings = params.oneclass
    source = data or (params.path(settings.data) if settings.data else None)
    images, labels = read_npz(source) if source else digits()
    image_set = prepare(images, labels, settings.size, str(source or "scikit-learn digits"))
    results = {}
    for name in settings.detectors:
        hyperparams = {**settings.hyperparams.get(name, {}), **data_hyperparams(name, settings.size, (0.0, 1.0))}
        build_detector(name, **hyperparams)  # a bad hyper-parameter fails before any training
        results[name] = run_protocol(image_set, lambda: build_detector(name, **hyperparams), settings.epochs,
                                     settings.batch_size, settings.learning_rate, settings.test_fraction, settings.seed)
    report = {"data": image_set.name, "images": len(image_set.labels), "size": settings.size, "epochs": settings.epochs,
              "auroc": results}
    table = pd.DataFrame({name: {**r["per_class"], "mean": r["mean"]} for name, r in results.items()}).T
    text = f"AUROC per normal class, {image_set.name} ({len(image_set.labels)} images)\n\n{table.to_markdown(floatfmt='.3f')}\n"
    for path, content in ((REPORT_JSON, json.dumps(report, indent=2)), (REPORT_MD, text)):
        write_text(params.path(path), content)
    _log_to_mlflow(params, results)
    return {name: round(r["mean"], 4) for name, r in results.items()}


def _log_to_mlflow(params: Params, results: dict) -> None:
    client = tracking.client(params)
    run_id = client.create_run(tracking.experiment_id(params), run_name="oneclass").info.run_id
    for name, result in results.items():
        client.log_metric(run_id, f"{name}.mean_auroc", result["mean"])
        for label, value in result["per_class"].items():
            client.log_metric(run_id, f"{name}.auroc_class_{label}", value)
    for path in (REPORT_JSON, REPORT_MD):
        client.log_artifact(run_id, str(params.path(path)))
    client.set_terminated(run_id)
