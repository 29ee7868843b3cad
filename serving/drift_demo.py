"""A drift drill against a running endpoint: healthy scans first, then the same scans shifted
(a bias field, a gamma contrast change, a global rescale, lost resolution, or the other contrast), reading the
endpoint's drift gauges after each phase.

The healthy scans are the healthy test subjects of the processed data: neither the training
ones, whose scores sit below the reference, nor the validation ones, whose scores are the
reference itself and would match it too well. They are sent round after round until the drift
window is full; the shifted phase sends as many again, so its window holds only shifted scores. Everything stays on the machine: the endpoint is named by URL (127.0.0.1 by default).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import requests

from components.data.layouts import read_dataset
from components.data.nifti_io import load_volume
from components.data.slice_store import read_index
from components.monitoring.shifts import SHIFTS
from pipelines.params import Params
from pipelines.preprocess import PROCESSED_DIR

OTHER_CONTRAST = {"t1": "t2", "t2": "t1", "t1ce": "t2", "flair": "t1"}
DRIFT_GAUGES = ("window", "psi", "ks", "wasserstein", "fraction_above", "expected_fraction_above")


def check_shift(shift: str) -> None:
    if shift != "contrast" and shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}: choose contrast or one of {sorted(SHIFTS)}")


@dataclass(frozen=True)
class Phase:
    name: str
    slices_sent: int
    gauges: dict[str, float]


def held_out_healthy(processed: Path, root: Path, layout: str, modality: str) -> list:
    """Healthy test subjects (not the reference's validation ones), read with the training data's layout."""
    index = read_index(processed)
    held_out = set(index.loc[(index.cohort == "healthy") & (index.split == "test"), "subject"])
    subjects = [s for s in read_dataset(root, layout, modality, "healthy") if s.subject_id in held_out]
    if not subjects:
        raise ValueError(f"no healthy test subject of {processed} found under {root}")
    return subjects


def other_contrast_scans(subjects: list, root: Path, layout: str, modality: str) -> list:
    """The same subjects' scans of the other contrast (T1 for a T2 model): the wrong-sequence upload."""
    wanted = {s.subject_id for s in subjects}
    return [s for s in read_dataset(root, layout, OTHER_CONTRAST[modality]) if s.subject_id in wanted]


def drill_scans(params: Params, shift: str) -> tuple[list, list | None]:
    """The drill's healthy subjects under ``params``, and for the contrast shift the
    same subjects' scans of the other modality."""
    data, root = params.data, params.path(params.data.healthy_root)
    subjects = held_out_healthy(params.path(PROCESSED_DIR), root, data.healthy_layout, data.modality)
    other = other_contrast_scans(subjects, root, data.healthy_layout, data.modality) if shift == "contrast" else None
    if other == []:
        raise ValueError(f"no {OTHER_CONTRAST[data.modality]} scans of the healthy test subjects under {root} "
                         f"for the contrast shift: choose one of {sorted(SHIFTS)}")
    return subjects, other


def upload(image: Path, shift: str | None) -> bytes:
    if shift is None:
        return image.read_bytes()
    data, affine = load_volume(image)
    return nib.Nifti1Image(SHIFTS[shift](data), affine).to_bytes()


def drift_gauges(url: str, site: str = "") -> dict[str, float]:
    """One site's drift gauges (site "": requests without ?site=, the training calibration)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        series, _, value = line.partition(" ")
        name, _, labels = series.partition("{")
        field = name.removeprefix("brainomaly_drift_")
        if name.startswith("brainomaly_drift_") and field in DRIFT_GAUGES and labels == f'site="{site}"}}':
            values[field] = float(value)
    return values


def send_phase(url: str, name: str, payloads, slices: int, headers: dict) -> Phase:
    """Send volumes until ``slices`` slice scores went out; returns the gauges after."""
    sent = 0
    for payload in itertools.cycle(payloads):
        response = requests.post(f"{url}/v1/predict", data=payload, headers=headers, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"{url}/v1/predict answered {response.status_code}: {response.text[:300]}")
        sent += response.json()["slices_scored"]
        if sent >= slices:
            break
    return Phase(name, sent, drift_gauges(url))


def run_drill(
    url: str, subjects: list, *, window: int, shift: str, other_contrast: list | None = None, api_key: str | None = None
) -> list[Phase]:
    """Healthy phase, then the shifted phase; ``shift`` is one of SHIFTS or 'contrast'
    (``other_contrast`` then holds the same subjects' other modality)."""
    check_shift(shift)
    headers = {"X-API-Key": api_key} if api_key else {}
    healthy = [upload(s.image, None) for s in subjects]
    if shift == "contrast":
        shifted = [upload(s.image, None) for s in other_contrast or []]
    else:
        shifted = [upload(s.image, shift) for s in subjects]
    if not shifted:
        raise ValueError("no scans of the other contrast were found")
    return [send_phase(url, "healthy", healthy, window, headers), send_phase(url, shift, shifted, window, headers)]
