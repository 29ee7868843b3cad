"""The documentation's pictures, drawn from the project's own runs and results.

    python docs/make_figures.py [--only NAME ...] [--scan FILE --segmentation FILE] [--real FILE]
        [--output docs/images]

- ``scored-scan``: the registry's champion (what `make run` registered) scores a phantom tumour
  scan of a site it never saw, through the endpoint's predictor: the slice it scores highest,
  its anomaly map over it with the tumour's outline, and the volume's verdict.
- ``real-scan``: the same for a real scan given with ``--real`` (none by default: the scans are
  the user's; the TCGA-LGG picture in the docs is under CC BY 3.0, credited in its caption).
- ``cross-site``: every detector of the comparison at the unseen sites after calibration, slice
  AUROC against Dice, marked by the default rule's verdict (benchmarks/results/cross_site.json).
- ``calibration``: healthy slices flagged against the number of healthy scans a site calibrates
  on (benchmarks/results/site_calibration.json).
- ``registry``: the MLflow registry page of the pipeline's model, in headless Chromium (Debian's
  ``chromium``), from a real `mlflow ui` on the project's store.
- ``dashboard`` and ``alerts``: a drift drill (healthy scans for a minute, then T1 scans into the T2
  model until ``ScoreDrift`` fires) against `brainomaly serve`, scraped by a real Prometheus
  (Debian's ``prometheus``) with the project's alert rules; ``dashboard`` draws each panel of the
  Grafana dashboard (infra/grafana/brainomaly-endpoint.json) from its own queries, ``alerts`` is
  Prometheus's alerts page in headless Chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, like the benchmarks

from components.data.nifti_io import load_volume  # noqa: E402
from components.errors import InvalidVolumeError  # noqa: E402
from components.preprocess.geometry import axial_axis  # noqa: E402
from pipelines.model_store import ModelNotFoundError, resolve_version  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.tracking import tracking_uri  # noqa: E402
from serving.drift_demo import drill_scans, upload  # noqa: E402
from serving.local_prometheus import alert_states, instant, query_range, running_prometheus, wait_for_alert  # noqa: E402
from serving.local_server import free_port, running_server  # noqa: E402
from serving.model_source import load_predictor  # noqa: E402

RESULTS = REPO / "benchmarks/results"
DASHBOARD = REPO / "infra/grafana/brainomaly-endpoint.json"
DEFAULT_SCAN = REPO / "data/raw/sites/other_vendor/tumour/BraTS2021_10000/BraTS2021_10000_t2.nii.gz"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The volume in RAS+ axis order, so that axis 2 is axial whatever the file's storage."""
    return np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(data, affine)).dataobj)


def scored_scan(output: Path, scan: Path, segmentation: Path | None, title: str) -> Path:
    """The champion's answer for ``scan``: its highest-scoring slice, the map over it, the verdict."""
    params = load_params(REPO / "params.yaml")
    name, version = resolve_version(f"models:/{params.registry.model_name}@{params.registry.alias}",
                                    tracking_uri(params))
    predictor = load_predictor(name, version, tracking_uri(params))
    data, affine = load_volume(scan)
    answer = predictor.predict(data, affine, with_map="nifti")
    anomaly = nib.Nifti1Image.from_bytes(gzip.decompress(answer["map"]))
    volume, heat = canonical(data, affine), canonical(np.asanyarray(anomaly.dataobj), anomaly.affine)
    tumour = canonical((load_volume(segmentation)[0] > 0).astype(np.uint8), affine) if segmentation else None
    top = max(answer["slices"], key=lambda s: s["score"])
    z = slice_in_canonical(top["index"], data.shape, affine)
    view = lambda v: np.rot90(v[:, :, z])  # noqa: E731 - anterior up, the radiologist's axial view
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4.4))
    for axis in (left, right):
        axis.imshow(view(volume), cmap="gray")
        axis.axis("off")
    shown = np.ma.masked_less_equal(view(heat), np.percentile(heat[heat > 0], 90) if (heat > 0).any() else 0)
    right.imshow(shown, cmap="inferno", alpha=0.75)
    if tumour is not None and view(tumour).any():
        right.contour(view(tumour), levels=[0.5], colors="cyan", linewidths=1.0)
    left.set_title(f"{scan.name}, slice {top['index']}", fontsize=9)
    right.set_title("anomaly map (top 10 %)" + (", tumour outline in cyan" if tumour is not None else ""), fontsize=9)
    verdict = (f"{answer['model']['detector']} v{answer['model']['version']}: volume {answer['volume_verdict']} "
               f"(score {answer['volume_score']:.2f} against {answer['volume_threshold']:.2f}); "
               f"this slice {top['verdict']} ({top['score']:.2f} against {answer['threshold']:.2f})")
    figure.suptitle(f"{title}\n{verdict}", fontsize=9)
    figure.tight_layout()
    return save(figure, output)


def slice_in_canonical(index: int, shape: tuple, affine: np.ndarray) -> int:
    """The RAS+ axial index of the input's own axial slice ``index`` (the answer's numbering)."""
    marker = np.zeros(shape, np.uint8)
    marker[(slice(None),) * axial_axis(affine) + (index,)] = 1
    return int(np.argmax(canonical(marker, affine).any(axis=(0, 1))))


def cross_site(output: Path) -> Path:
    """Slice AUROC against Dice at the unseen sites, after calibration, one point per detector."""
    report = json.loads((RESULTS / "cross_site.json").read_text())
    rule = report["default_rule"]
    figure, axis = plt.subplots(figsize=(7.5, 5))
    for name, found in report["detectors"].items():
        unseen = [s for site, s in found["sites"].items() if site != report["training_site"]]
        auroc, dice = np.mean([s["slice_auroc"] for s in unseen]), np.mean([s["dice_mean"] for s in unseen])
        chosen = name.removesuffix(" as served") == rule["chosen"]
        style = ("*", "crimson", 220) if chosen else ("o", "tab:blue", 60) if name in rule["eligible"] else ("o", "0.6", 40)
        axis.scatter(auroc, dice, marker=style[0], color=style[1], s=style[2], zorder=3)
        axis.annotate(name, (auroc, dice), textcoords="offset points", xytext=(5, 4), fontsize=8)
    targets = report["targets"]
    axis.axvline(float(targets["slice_auroc"].split()[-1]), color="0.8", linestyle="--", zorder=1)
    axis.axhline(float(targets["dice_mean"].split()[-1]), color="0.8", linestyle="--", zorder=1)
    axis.set_xlabel("slice AUROC, mean of the unseen sites")
    axis.set_ylabel("Dice after calibration, mean of the unseen sites")
    axis.set_title(f"Detectors at the unseen phantom sites (dashed: the targets)\nstar: the default rule's choice "
                   f"({rule['chosen']}); blue: eligible; grey: not eligible", fontsize=9)
    figure.tight_layout()
    return save(figure, output)


def calibration(output: Path) -> Path:
    """Healthy slices flagged (mean, 5th-95th percentile over draws) by calibration scans, per site."""
    report = json.loads((RESULTS / "site_calibration.json").read_text())
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for site, found in report["sites"].items():
        counts = sorted(found["by_calibration_scans"], key=int)
        x = [int(n) for n in counts]
        rows = [found["by_calibration_scans"][n] for n in counts]
        line, = axis.plot(x, [100 * r["mean"] for r in rows], marker="o", label=site)
        axis.fill_between(x, [100 * r["p5"] for r in rows], [100 * r["p95"] for r in rows], color=line.get_color(), alpha=0.15)
        axis.scatter([0], [100 * found["deployed_threshold_false_alarm_rate"]], color=line.get_color(), marker="x")
    axis.axhline(100 * report["target_false_alarm_rate"], color="0.5", linestyle="--", label="target")
    axis.set_xlabel("healthy scans the site calibrates on (x at 0: the deployed thresholds)")
    axis.set_ylabel("healthy slices flagged, %")
    axis.set_title(f"{report['model']}: false alarms after site calibration "
                   f"(mean and 5th-95th percentile of {report['draws']} draws)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, output)


def registry(output: Path) -> Path:
    """The registry page of the model, as a reviewer opens it."""
    params = load_params(REPO / "params.yaml")
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                               tracking_uri(params), "--host", "127.0.0.1", "--port", str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health")
        screenshot(f"{url}/#/models/{params.registry.model_name}", output, "1280,860")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return output


def screenshot(url: str, output: Path, size: str) -> Path:
    """``url`` as headless Chromium draws it once its scripts ran (Debian's ``chromium``)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit(f"{output.stem}: headless Chromium is needed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                        "--hide-scrollbars", f"--window-size={size}", f"--screenshot={output.resolve()}", url],
                       capture_output=True, timeout=180, check=True)
    return output


@contextlib.contextmanager
def drift_drill(folder: Path, healthy_s: float = 60, firing_within_s: float = 300, after_firing_s: float = 20):
    """`brainomaly serve` scraped by Prometheus: healthy scans for ``healthy_s``, then T1 scans into the T2
    model until ScoreDrift fires (within ``firing_within_s``), and ``after_firing_s`` more; yields
    (Prometheus URL, start, end)."""
    params = load_params(REPO / "params.yaml")
    subjects, other = drill_scans(params, "contrast")
    healthy, shifted = [upload(s.image, None) for s in subjects], [upload(s.image, None) for s in other]
    with running_server(REPO) as url, running_prometheus(url.removeprefix("http://"), folder) as prometheus:
        start = time.time()
        send_until(url, healthy, lambda: time.time() > start + healthy_s)
        shifting = time.time()
        send_until(url, shifted, lambda: "firing" in alert_states(prometheus, "ScoreDrift")
                   or time.time() > shifting + firing_within_s)
        if "firing" not in alert_states(prometheus, "ScoreDrift"):
            raise RuntimeError(f"ScoreDrift did not fire within {firing_within_s:.0f} s of T1 scans; the gauges: "
                               + ", ".join(f"{r['metric']['__name__']} {float(r['value'][1]):.3g}"
                                           for r in instant(prometheus, '{__name__=~"brainomaly_drift_(psi|ks)"}')))
        fired = time.time()
        send_until(url, shifted, lambda: time.time() > fired + after_firing_s)
        if not wait_for_alert(prometheus, "ScoreDrift", 5):
            raise RuntimeError("ScoreDrift fired and then resolved during the drill")
        yield prometheus, start, time.time()


def send_until(url: str, payloads: list[bytes], done) -> None:
    for payload in itertools.cycle(payloads):
        requests.post(f"{url}/v1/predict", data=payload, timeout=300).raise_for_status()
        if done():
            return


def dashboard(output: Path, prometheus: str, start: float, end: float) -> Path:
    """Every panel of the Grafana dashboard at its place on the grid, from the panel's own queries."""
    board = json.loads(DASHBOARD.read_text())
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(16, 1.5 * rows / 4), facecolor="#111217")
    grid = figure.add_gridspec(rows, 24, hspace=8, wspace=4, left=0.04, right=0.99, top=0.93, bottom=0.04)
    for panel in panels:
        place = panel["gridPos"]
        axis = figure.add_subplot(grid[place["y"]:place["y"] + place["h"] - 1, place["x"]:place["x"] + place["w"]])
        series = [(target.get("legendFormat", ""), query_range(prometheus, grafana_to_promql(target["expr"]), start,
                                                               end, 2)) for target in panel["targets"]]
        style_panel(axis, panel["title"])
        if any(results for _, results in series):
            PANEL_KINDS.get(panel["type"], timeseries_panel)(axis, panel, series, start)
        else:  # as Grafana says it: the 5xx ratio has no series while nothing failed
            axis.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"{board['title']}: the Grafana dashboard's panels, from a real "
                    "Prometheus during a drift drill (healthy T2 scans, then T1 scans into the T2 model)",
                    color="white", fontsize=11)
    return save(figure, output)


def grafana_to_promql(expr: str) -> str:
    """Grafana's $__rate_interval, at a 1 s scrape: four scrapes and a step."""
    return expr.replace("$__rate_interval", "6s")


def style_panel(axis, title: str) -> None:
    axis.set_facecolor("#181b1f")
    axis.set_title(title, color="#ccccdc", fontsize=9, loc="left")
    axis.tick_params(colors="#8e8e8e", labelsize=7)
    for spine in axis.spines.values():
        spine.set_color("#2c3235")


def legend_name(template: str, metric: dict) -> str:
    return re.sub(r"{{\s*(\w+)\s*}}", lambda m: metric.get(m.group(1), ""), template) or metric.get("__name__", "")


def timeseries_panel(axis, panel: dict, series: list, start: float) -> None:
    for template, results in series:
        for result in results:
            t, v = np.array(result["values"], dtype=float).T
            axis.plot(t - start, v, linewidth=1.2, label=legend_name(template, result["metric"]))
    axis.set_xlabel("seconds into the drill", color="#8e8e8e", fontsize=7)
    if axis.lines:
        axis.legend(fontsize=7, facecolor="#181b1f", labelcolor="#ccccdc", edgecolor="#2c3235")


def heatmap_panel(axis, panel: dict, series: list, start: float) -> None:
    """Slices per score bucket and step: the cumulative buckets of the histogram, differenced."""
    results = sorted(series[0][1], key=lambda r: float(r["metric"]["le"]))
    if not results:
        return
    times = np.array(results[0]["values"], dtype=float)[:, 0]
    cumulative = np.array([[dict((float(t), float(v)) for t, v in r["values"]).get(t, 0.0) for t in times]
                           for r in results])
    counts = np.diff(cumulative, axis=0, prepend=0)
    used = np.flatnonzero(counts.sum(axis=1))  # the buckets any slice fell in, and one either side
    rows = slice(max(used.min() - 1, 0), used.max() + 2) if used.size else slice(None)
    edges = [float(r["metric"]["le"]) for r in results][rows]
    axis.imshow(np.log1p(counts[rows]), aspect="auto", origin="lower", cmap="inferno",
                extent=(times[0] - start, times[-1] - start, 0, len(edges)))
    axis.set_yticks(np.arange(len(edges)) + 0.5, [f"≤ {e:.3g}" for e in edges], fontsize=7)
    axis.set_ylabel("slice score", color="#8e8e8e", fontsize=7)
    axis.set_xlabel("seconds into the drill", color="#8e8e8e", fontsize=7)


def gauge_panel(axis, panel: dict, series: list, start: float) -> None:
    """The newest value of the training calibration's series (site ""), coloured by the panel's thresholds."""
    values = [float(r["values"][-1][1]) for _, results in series for r in results if r["metric"].get("site", "") == ""]
    value = values[0] if values else float("nan")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    colour = [step["color"] for step in steps if step["value"] is None or value >= step["value"]][-1]
    axis.text(0.5, 0.45, f"{value:.3f}", color={"green": "#73bf69", "yellow": "#fade2a", "red": "#f2495c"}[colour],
              fontsize=26, ha="center", va="center", transform=axis.transAxes)
    limits = ", ".join(f"{step['color']} from {step['value']}" for step in steps if step["value"] is not None)
    axis.text(0.5, 0.1, limits, color="#8e8e8e", fontsize=7, ha="center", transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


def table_panel(axis, panel: dict, series: list, start: float) -> None:
    labels = [r["metric"] for _, results in series for r in results]
    text = "\n".join(", ".join(f"{k}={v}" for k, v in sorted(m.items()) if k not in ("__name__", "instance", "job"))
                     for m in labels) or "no model"
    axis.text(0.03, 0.9, text, color="#ccccdc", fontsize=8, va="top", transform=axis.transAxes, wrap=True)
    axis.set_xticks([])
    axis.set_yticks([])


PANEL_KINDS = {"timeseries": timeseries_panel, "heatmap": heatmap_panel, "gauge": gauge_panel, "table": table_panel}


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def save(figure, output: Path) -> Path:
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


FIGURES = ("scored-scan", "real-scan", "cross-site", "calibration", "registry", "dashboard", "alerts")
DRILLED = ("dashboard", "alerts")  # drawn from one drift drill
DRILL_SUMMARY = (("PSI", "brainomaly_drift_psi"), ("KS", "brainomaly_drift_ks"),
                 ("above threshold", "brainomaly_drift_fraction_above"), ("CUSUM events", "brainomaly_drift_events_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=FIGURES, help="some of the pictures (default: all it can draw)")
    parser.add_argument("--scan", type=Path, default=DEFAULT_SCAN, help="the phantom scan of scored-scan")
    parser.add_argument("--segmentation", type=Path, help="its tumour segmentation (default: the scan's _seg file)")
    parser.add_argument("--real", type=Path, help="a real scan for real-scan (skull-stripped NIfTI)")
    parser.add_argument("--output", type=Path, default=REPO / "docs/images")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    wanted = args.only or [name for name in FIGURES if name != "real-scan" or args.real]
    segmentation = args.segmentation or args.scan.with_name(args.scan.name.replace("_t2.", "_seg."))
    draw = {
        "scored-scan": lambda path: scored_scan(path, args.scan, segmentation if segmentation.is_file() else None,
                                                "A phantom glioma from a site the model never saw"),
        "real-scan": lambda path: scored_scan(path, args.real, None,
                                              f"A real scan: {args.real.parent.name}/{args.real.name}"),
        "cross-site": cross_site,
        "calibration": calibration,
        "registry": registry,
    }
    for name in wanted:
        if name == "real-scan" and args.real is None:
            raise SystemExit("real-scan: give the scan with --real FILE")
        try:
            if name not in DRILLED:
                print(draw[name](args.output / f"{name}.png"))
        except (ModelNotFoundError, InvalidVolumeError, FileNotFoundError) as err:  # no model yet, or a bad scan
            raise SystemExit(f"{name}: {err}") from None
    if drilled := [name for name in wanted if name in DRILLED]:
        monitoring(args.output, drilled)


def monitoring(output: Path, wanted: list[str]) -> None:
    """The pictures of one drift drill."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            with drift_drill(Path(folder)) as (prometheus, start, end):
                print(", ".join(f"{name} {float(found[0]['value'][1]):.3g}" for name, found in
                                ((name, instant(prometheus, f'{metric}{{site=""}}')) for name, metric in DRILL_SUMMARY)
                                if found))
                if "dashboard" in wanted:
                    print(dashboard(output / "dashboard.png", prometheus, start, end))
                if "alerts" in wanted:
                    print(screenshot(f"{prometheus}/classic/alerts", output / "alerts.png", "1280,900"))
        except (RuntimeError, ValueError, requests.RequestException) as err:  # no model, server or Prometheus
            raise SystemExit(f"{', '.join(wanted)}: {err}") from None


if __name__ == "__main__":
    main()
