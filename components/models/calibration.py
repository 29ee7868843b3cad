"""A model's decision thresholds, and the units its scores are in, as every scorer applies them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

SCORE_REFERENCES = ("none", "scan_median", "brain_median")  # what a slice score is relative to
PRECISIONS = ("fp32", "bf16")  # the arithmetic of inference
PIXEL_MEDIAN = 3  # pixels: the post-processing median's in-plane window (evaluate.pixel_median)
MEDIAN_SHAPES = ("cubic", "millimetres")  # through-plane: as many slices as pixels, or no more millimetres


class Scoring(NamedTuple):
    """How a model's slices are scored and its maps post-processed: the units its thresholds are in.

    reference: what the slice scores are relative to ("none"; "scan_median", the median of the
    scan's; "brain_median", the slice's own typical residual: components/models/inference.py).
    precision: the arithmetic of inference ("fp32"; "bf16", autocast).
    pixel_median: the in-plane window (pixels) of the median filter each scan's stacked maps get
    before the pixel threshold applies (components/metrics/postprocess.py).
    median_shape: its window through-plane: "millimetres", as many slices as span no more
    millimetres than the in-plane window (``median_window``); "cubic", as many slices as pixels.
    """

    reference: str = "none"
    precision: str = "fp32"
    pixel_median: int = PIXEL_MEDIAN
    median_shape: str = "millimetres"

    def median_spacing(self, spacing_mm: tuple[float, float] | None):
        """The (slice, pixel) spacing the median's window follows: none for a cubic one."""
        return spacing_mm if self.median_shape == "millimetres" else None


@dataclass(frozen=True)
class Calibration:
    """Decision thresholds, all from healthy scans: split-conformal for a false-alarm rate of
    1 - ``percentile`` / 100 (components/metrics/conformal.py).

    slice_threshold: on slice scores; volume_threshold: on volume scores (max over slices);
    pixel_threshold: on post-processed anomaly-map voxels inside the brain (see components/metrics/postprocess.py).
    reference_scores: the healthy validation slice scores (the drift reference).
    score_reference, precision, pixel_median, median_shape: the model's ``Scoring`` (``.scoring``): the thresholds
    and the reference scores are in its units, so every scorer of the model applies it.
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
    pixel_median: int = 5  # and smoothed their maps 5 x 5 x 5
    median_shape: str = "cubic"  # in cubes, however far apart a scan's slices were

    def __post_init__(self) -> None:  # refused at load, not at every prediction
        if self.score_reference not in SCORE_REFERENCES:
            raise ValueError(f"calibration.score_reference {self.score_reference!r}: expected one of "
                             f"{', '.join(SCORE_REFERENCES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"calibration.precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not (isinstance(self.pixel_median, int) and self.pixel_median >= 1 and self.pixel_median % 2):
            raise ValueError(f"calibration.pixel_median {self.pixel_median!r}: expected an odd whole number of voxels >= 1")
        if self.median_shape not in MEDIAN_SHAPES:
            raise ValueError(f"calibration.median_shape {self.median_shape!r}: expected one of {', '.join(MEDIAN_SHAPES)}")

    @property
    def scoring(self) -> Scoring:
        return Scoring(self.score_reference, self.precision, self.pixel_median, self.median_shape)
