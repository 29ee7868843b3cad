"""The self-describing model folder: everything needed to use a trained detector.

Layout::

    weights.pt      the detector's state_dict
    bundle.json     detector name + hyper-parameters, preprocessing spec, thresholds,
                    reference (healthy validation) score distribution, data version, metrics,
                    and what it was evaluated on (the processed data's content hash)
    test_scores.parquet   each rated test slice's subject, slice, label and score: the
                    evidence a later candidate is compared with (promotion gate)

Serving and notebooks rebuild the detector and its preprocessing from this folder alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from components.atomic import atomic_path, write_json
from components.models.inference import PRECISIONS, SCORE_REFERENCES, resolve_device
from components.models.registry import build_detector
from components.preprocess.spec import PreprocessSpec

WEIGHTS = "weights.pt"
DESCRIPTION = "bundle.json"
TEST_SCORES = "test_scores.parquet"


@dataclass(frozen=True)
class Calibration:
    """Decision thresholds, all from healthy scans: split-conformal for a false-alarm rate of
    1 - ``percentile`` / 100 (components/metrics/conformal.py).

    slice_threshold: on slice scores; volume_threshold: on volume scores (max over slices);
    pixel_threshold: on post-processed anomaly-map voxels inside the brain (see components/metrics/postprocess.py).
    reference_scores: the healthy validation slice scores (the drift reference).
    score_reference: what the slice scores are relative to ("none"; "scan_median", the median of
    the scan's; "brain_median", the slice's own typical residual: components/models/inference.py);
    the thresholds and the reference scores are in those units, so every scorer of the model applies it.
    precision: the arithmetic the scores were computed in ("fp32"; "bf16", autocast), applied likewise.
    scans: how many healthy scans the thresholds came from; guaranteed_rates: per threshold
    ("slice", "volume", "pixel"), the false-alarm rate those scans guarantee (above the target
    when they were too few). Both empty in bundles saved before them.
    """

    percentile: float
    slice_threshold: float
    volume_threshold: float
    pixel_threshold: float
    reference_scores: list[float]
    score_reference: str = "none"  # bundles saved before the field scored as "none"
    precision: str = "fp32"  # and in fp32
    scans: int = 0
    guaranteed_rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:  # refused at load, not at every prediction
        if self.score_reference not in SCORE_REFERENCES:
            raise ValueError(f"calibration.score_reference {self.score_reference!r}: expected one of "
                             f"{', '.join(SCORE_REFERENCES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"calibration.precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")


def bundle_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of the weights and of the whole bundle (every file's relative path and bytes):
    recorded at registration, checked before a version is served."""
    folder, whole = Path(folder), hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        whole.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            whole.update(hashlib.file_digest(file, "sha256").digest())
    with (folder / WEIGHTS).open("rb") as file:
        weights = hashlib.file_digest(file, "sha256").hexdigest()
    return {"weights_sha256": weights, "bundle_sha256": whole.hexdigest()}


@dataclass(frozen=True)
class DetectorBundle:
    model_name: str
    hyperparams: dict
    preprocess: PreprocessSpec
    calibration: Calibration
    data_version: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # evaluation_fingerprint: the data and labels evaluated on

    def save(self, folder: Path, state_dict: dict) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / WEIGHTS) as tmp:
            torch.save(state_dict, tmp)
        write_json(folder / DESCRIPTION, asdict(self))
        return folder

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> tuple["DetectorBundle", nn.Module]:
        """Read a bundle folder; returns the description and the detector in eval mode on
        ``device`` (``resolve_device``'s names: "auto" takes a visible GPU)."""
        folder = Path(folder)
        for name in (WEIGHTS, DESCRIPTION):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a detector bundle: {name} is missing")
        raw = json.loads((folder / DESCRIPTION).read_text())
        bundle = cls(
            model_name=raw["model_name"],
            hyperparams=raw["hyperparams"],
            preprocess=PreprocessSpec.from_dict(raw["preprocess"]),
            calibration=Calibration(**raw["calibration"]),
            data_version=raw.get("data_version", {}),
            metrics=raw.get("metrics", {}),
            evaluation=raw.get("evaluation", {}),
        )
        detector = build_detector(bundle.model_name, **bundle.hyperparams)
        detector.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
        return bundle, detector.to(resolve_device(device)).eval()
