"""The preprocessing contract: written by the preprocess stage, carried inside every model.

Every step is a field, so one spec says exactly how a volume became model input, and serving
replays it on an uploaded scan. ``components/preprocess/presets.py`` names the papers' recipes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from components.atomic import write_json

Normalisation = Literal["percentile", "zscore"]
Crop = Literal["brain_box", "fixed"]
NORMALISATIONS, CROPS = get_args(Normalisation), get_args(Crop)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a volume becomes model input, step by step in this order.

    skull_strip: a skull-on scan (no mask given, not already stripped) is reduced to its brain
        (``brain_mask.extract_brain``); off, its whole head is the mask.
    spacing_mm: resample to this isotropic voxel size (cubic for images), or keep the file's grid.
    bias_correction: N4 bias-field correction (SimpleITK) inside the brain mask.
    normalisation: 'percentile' maps the (low, high) ``percentiles`` of the brain's intensities
        to ``value_range`` and clips; 'zscore' subtracts the brain's mean and divides by its std.
    histogram_landmarks: when given, the brain's intensity quantiles (0, 1, ..., 100 %) are mapped
        onto these reference values after normalisation (histogram matching); the preprocess stage
        fills them from the reference volume.
    min_brain_fraction: keep an axial slice when its brain area is at least this fraction of the
        largest slice's; middle_mm: keep only the slices within this many millimetres centred on the
        brain's axial extent (at 1 mm, the middle N slices).
    crop: 'brain_box' = the brain's in-plane bounding box made square; 'fixed' = a ``crop_mm``
        square centred on the brain. Then resized to (size, size).
    Outside the brain every pixel is ``background``.
    """

    size: int = 64
    skull_strip: bool = True
    spacing_mm: float | None = None
    bias_correction: bool = False
    normalisation: Normalisation = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    value_range: tuple[float, float] = (0.0, 1.0)
    histogram_landmarks: tuple[float, ...] | None = None
    min_brain_fraction: float = 0.3
    middle_mm: float | None = None
    crop: Crop = "brain_box"
    crop_mm: float | None = None

    def __post_init__(self) -> None:
        for message in self._problems():
            raise ValueError(message)

    def _problems(self):
        if self.size < 16 or self.size % 16:
            yield f"preprocess.size must be a multiple of 16 and >= 16, got {self.size}"
        if self.spacing_mm is not None and not 0.1 <= self.spacing_mm <= 10.0:
            yield f"preprocess.spacing_mm must lie in [0.1, 10] mm, got {self.spacing_mm}"
        if self.normalisation not in NORMALISATIONS:
            yield f"preprocess.normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}"
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            yield f"preprocess.percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}"
        if not self.value_range[0] < self.value_range[1]:
            yield f"preprocess.value_range must be (low, high) with low < high, got {list(self.value_range)}"
        landmarks = self.histogram_landmarks
        if landmarks is not None and (len(landmarks) < 2 or any(b < a for a, b in zip(landmarks, landmarks[1:]))):
            yield "preprocess.histogram_landmarks must be a non-decreasing list of at least two values"
        if not 0.0 <= self.min_brain_fraction < 1.0:
            yield f"preprocess.min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}"
        if self.middle_mm is not None and self.middle_mm <= 0:
            yield f"preprocess.middle_mm must be > 0, got {self.middle_mm}"
        if self.crop not in CROPS:
            yield f"preprocess.crop must be one of {', '.join(CROPS)}, got {self.crop!r}"
        if self.crop == "fixed" and not (self.crop_mm and self.crop_mm > 0):
            yield "preprocess.crop 'fixed' needs crop_mm > 0 (the side of the square, in mm)"

    @property
    def output_range(self) -> tuple[float, float] | None:
        """The interval model inputs (and reconstructions) live in; None when unbounded (z-score)."""
        return tuple(self.value_range) if self.normalisation == "percentile" else None

    @property
    def background(self) -> float:
        return self.value_range[0] if self.normalisation == "percentile" else 0.0

    def to_json(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessSpec":
        """Build from JSON-like values; unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        if unknown := set(values) - known:
            raise ValueError(f"unknown preprocessing steps: {', '.join(sorted(unknown))}")
        tuples = {"percentiles", "value_range", "histogram_landmarks"}
        return cls(**{k: tuple(float(x) for x in v) if k in tuples and v is not None else v for k, v in values.items()})

    @classmethod
    def from_json(cls, path: Path) -> "PreprocessSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))
