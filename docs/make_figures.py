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
"""

from __future__ import annotations

import argparse
import gzip
import json
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
from serving.local_server import free_port  # noqa: E402
from serving.model_source import load_predictor  # noqa: E402

RESULTS = REPO / "benchmarks/results"
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
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("registry: headless Chromium is needed (Debian: apt-get install chromium)")
    params = load_params(REPO / "params.yaml")
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                               tracking_uri(params), "--host", "127.0.0.1", "--port", str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                            "--hide-scrollbars", "--window-size=1280,860", f"--screenshot={output.resolve()}",
                            f"{url}/#/models/{params.registry.model_name}"], capture_output=True, timeout=180, check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return output


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


FIGURES = ("scored-scan", "real-scan", "cross-site", "calibration", "registry")


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
            print(draw[name](args.output / f"{name}.png"))
        except (ModelNotFoundError, InvalidVolumeError, FileNotFoundError) as err:  # no model yet, or a bad scan
            raise SystemExit(f"{name}: {err}") from None


if __name__ == "__main__":
    main()
