"""The preprocessing contract: written by the preprocess stage, carried inside every model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreprocessSpec:
    """How a volume becomes model input.

    size: output slices are (size, size) pixels.
    min_brain_fraction: keep an axial slice when its brain area is at least this fraction of the
        volume's largest axial brain area.
    percentiles: (low, high) intensity percentiles inside the brain mapped to 0 and 1.
    """

    size: int = 64
    min_brain_fraction: float = 0.3
    percentiles: tuple[float, float] = (1.0, 99.0)

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 16:
            raise ValueError(f"preprocess.size must be a multiple of 16 and >= 16, got {self.size}")
        if not 0.0 <= self.min_brain_fraction < 1.0:
            raise ValueError(f"preprocess.min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"preprocess.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessSpec":
        return cls(
            size=int(values["size"]),
            min_brain_fraction=float(values["min_brain_fraction"]),
            percentiles=tuple(float(p) for p in values["percentiles"]),
        )

    @classmethod
    def from_json(cls, path: Path) -> "PreprocessSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))
