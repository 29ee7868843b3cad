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
from components.models.calibration import Calibration
from components.models.inference import resolve_device
from components.models.registry import build_detector
from components.preprocess.spec import PreprocessSpec

WEIGHTS = "weights.pt"
DESCRIPTION = "bundle.json"
TEST_SCORES = "test_scores.parquet"


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
