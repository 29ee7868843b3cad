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
from components.scoring.volume import volume_score


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
        """Scores of one (X, Y, Z) skull-stripped volume; slice indices are the input's own.

        When the recipe resamples along the axial axis, several model slices may come from one
        input slice: that slice's score is the highest of theirs.
        """
        slices = preprocess_volume(data, affine, self.bundle.preprocess)
        scores = score_slices(self.detector, slices.images, slices.brain).scores
        per_slice: dict[int, float] = {}
        for index, value in zip(slices.slice_numbers.tolist(), scores.tolist()):
            per_slice[index] = max(value, per_slice.get(index, value))
        calibration = self.bundle.calibration
        score = volume_score(scores)
        return {
            "model": {"name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name},
            "data_version": self.bundle.data_version,
            "threshold": calibration.slice_threshold,
            "volume_threshold": calibration.volume_threshold,
            "volume_score": score,
            "volume_verdict": _verdict(score, calibration.volume_threshold),
            "slices_scored": len(per_slice),
            "slices_skipped": int(data.shape[axial_axis(affine)]) - len(per_slice),
            "slices": [
                {"index": i, "score": s, "verdict": _verdict(s, calibration.slice_threshold)} for i, s in sorted(per_slice.items())
            ],
        }


def _verdict(score: float, threshold: float) -> str:
    return "anomalous" if score > threshold else "normal"

