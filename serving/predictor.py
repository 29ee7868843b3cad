"""Volume in, verdicts out: the detector bundle applied to one uploaded scan.

Free of Ray and HTTP so it can be tested and reused directly; it calls the very same
``components.preprocess`` code that produced the training slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from components.models.bundle import DetectorBundle
from components.models.inference import score_slices
from components.preprocess.geometry import axial_axis
from components.preprocess.volume import preprocess_volume
from components.scoring.residual import volume_score


@dataclass
class VolumePredictor:
    bundle: DetectorBundle
    detector: nn.Module
    model_name: str = "unregistered"
    model_version: str = "0"

    @classmethod
    def from_folder(cls, folder: Path, model_name: str = "unregistered", model_version: str = "0") -> "VolumePredictor":
        bundle, detector = DetectorBundle.load(folder)
        return cls(bundle, detector, model_name, model_version)

    def predict(self, data: np.ndarray, affine: np.ndarray) -> dict:
        """Scores of one (X, Y, Z) skull-stripped volume; slice indices are the input's own."""
        slices = preprocess_volume(data, affine, self.bundle.preprocess)
        _, scores = score_slices(self.detector, slices.images, slices.brain)
        calibration = self.bundle.calibration
        score = volume_score(scores)
        return {
            "model": {"name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name},
            "data_version": self.bundle.data_version,
            "threshold": calibration.slice_threshold,
            "volume_threshold": calibration.volume_threshold,
            "volume_score": score,
            "volume_verdict": _verdict(score, calibration.volume_threshold),
            "slices_scored": len(scores),
            "slices_skipped": int(data.shape[axial_axis(affine)]) - len(scores),
            "slices": [
                {"index": int(i), "score": float(s), "verdict": _verdict(s, calibration.slice_threshold)}
                for i, s in sorted(zip(slices.slice_numbers, scores))
            ],
        }


def _verdict(score: float, threshold: float) -> str:
    return "anomalous" if score > threshold else "normal"

