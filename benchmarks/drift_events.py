"""How often the drift CUSUM cries wolf on healthy traffic, and how soon it sees a shift.

    python benchmarks/drift_events.py [--streams 200] [--scans 500] [--shift bias_field] [--version N]
                                      [--output benchmarks/results/drift_events.json]

Runs after `make run`, on the registered champion (or version N), as the endpoint scores: the training site's
held-out healthy scans (data/raw/sites/<training site>/healthy: never trained on, and not the
validation scans whose scores are the drift reference) and the same scans with ``--shift``
applied. Healthy traffic is ``--streams`` streams of ``--scans`` scans drawn at random from them;
each goes through the endpoint's per-scan CUSUM (serve.drift in params.yaml) and, for comparison,
through a CUSUM over single slices (k 0.5, h 12, the rule before). Reported: events per 1,000
healthy scans, the share of streams with any event, and, for a stream that turns to shifted scans
after 100 healthy ones, how many shifted scans pass before the first event. Also the window
statistics (PSI, KS) of a full window of independent healthy scans against the reference.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.volume_verdicts import load_champion  # noqa: E402
from components.atomic import write_json  # noqa: E402
from components.data.nifti_io import load_volume  # noqa: E402
from components.machine import machine  # noqa: E402
from components.monitoring.drift import Cusum, DriftMonitor, ks_statistic, psi  # noqa: E402
from components.monitoring.shifts import SHIFTS  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.sites import site_subjects  # noqa: E402

WARM_UP = 100  # healthy scans before a stream turns to shifted ones


def scan_scores(predictor, subjects, shift: str | None) -> list[np.ndarray]:
    scores = []
    for subject in subjects:
        data, affine = load_volume(subject.image)
        result = predictor.predict(SHIFTS[shift](data) if shift else data, affine)
        scores.append(np.array([s["score"] for s in result["slices"]]))
    return scores


def stream_events(healthy: list[np.ndarray], reference: np.ndarray, settings, streams: int, scans: int,
                  seed: int) -> dict:
    """Events on healthy streams: the per-scan CUSUM's and the slice CUSUM's."""
    rng = np.random.default_rng(seed)
    by_scan, by_slice = [], []
    for _ in range(streams):
        monitor = DriftMonitor(reference, 0.0, **asdict(settings))
        slices = Cusum(float(reference.mean()), float(reference.std()), k=0.5, h=12.0)
        drawn = [healthy[i] for i in rng.integers(0, len(healthy), scans)]
        by_scan.append(sum(monitor.update(s, now=0.0) for s in drawn))
        by_slice.append(sum(slices.update(s) for s in drawn))
    slices_per_scan = float(np.mean([len(s) for s in healthy]))
    return {rule: {"events_per_1000_scans": 1000 * float(np.sum(events)) / (streams * scans),
                   "events_per_5000_slices": 5000 * float(np.sum(events)) / (streams * scans * slices_per_scan),
                   "streams_with_an_event": float(np.mean(np.array(events) > 0))}
            for rule, events in (("per-scan CUSUM", by_scan), ("slice CUSUM (before)", by_slice))}


def detection_delay(healthy, shifted, reference, settings, streams: int, seed: int) -> dict:
    """Shifted scans seen before the first event, after WARM_UP healthy ones (None: not within 200)."""
    rng, delays = np.random.default_rng(seed), []
    for _ in range(streams):
        monitor = DriftMonitor(reference, 0.0, **asdict(settings))
        for i in rng.integers(0, len(healthy), WARM_UP):
            monitor.update(healthy[i], now=0.0)
        monitor.cusum.reset()  # the delay from a clean start: warm-up events are counted above
        delay = next((n for n, i in enumerate(rng.integers(0, len(shifted), 200), 1) if monitor.update(shifted[i], now=0.0)),
                     None)
        delays.append(delay)
    found = [d for d in delays if d is not None]
    return {"median_scans": float(np.median(found)) if found else None,
            "p90_scans": float(np.quantile(found, 0.9)) if found else None, "caught": len(found) / len(delays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--scans", type=int, default=500)
    parser.add_argument("--shift", default="bias_field", choices=sorted(SHIFTS))
    parser.add_argument("--version", help="a registered version instead of the champion")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/drift_events.json")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    settings, start = params.serve.drift, time.perf_counter()
    predictor = load_champion(params, args.version)
    subjects, _ = site_subjects(params.path(params.phantoms.sites_root) / params.phantoms.spec.training_site, params.data.modality)
    healthy, shifted = scan_scores(predictor, subjects, None), scan_scores(predictor, subjects, args.shift)
    reference = np.asarray(predictor.bundle.calibration.reference_scores)
    window = np.concatenate(healthy)[-settings.window:]
    report = {
        "machine": machine(), "model": f"{predictor.model_name} v{predictor.model_version} ({predictor.bundle.model_name})", "healthy_scans": len(healthy),
        "shift": args.shift, "streams": args.streams, "scans_per_stream": args.scans,
        "settings": {"cusum_k": settings.cusum_k, "cusum_h": settings.cusum_h, "window": settings.window},
        "healthy_window_vs_reference": {"psi": psi(reference, window), "ks": ks_statistic(reference, window)},
        "healthy_traffic": stream_events(healthy, reference, settings, args.streams, args.scans, seed=0),
        "shifted_after_healthy": detection_delay(healthy, shifted, reference, settings, args.streams, seed=1),
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(args.output, report)
    table = Table(title=f"Drift events on {args.streams} streams of {args.scans} healthy scans ({len(healthy)} held-out scans)")
    for column in ("rule", "events / 1,000 scans", "events / 5,000 slices", "streams with an event"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for rule, found in report["healthy_traffic"].items():
        table.add_row(rule, f"{found['events_per_1000_scans']:.2f}", f"{found['events_per_5000_slices']:.2f}",
                      f"{found['streams_with_an_event']:.0%}")
    Console().print(table)
    delay = report["shifted_after_healthy"]
    Console().print(f"{args.shift}: caught in {delay['caught']:.0%} of streams, median {delay['median_scans']} shifted scans "
                    f"(90th percentile {delay['p90_scans']}); a healthy window vs the reference: "
                    f"PSI {report['healthy_window_vs_reference']['psi']:.3f}, KS {report['healthy_window_vs_reference']['ks']:.3f}")


if __name__ == "__main__":
    main()
