"""Volume in, verdicts out: the detector bundle applied to one uploaded scan.

Free of Ray and HTTP so it can be tested and reused directly; it calls the very same
``components.preprocess`` code that produced the training slices.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from torch import nn

from components.data.nifti_io import InvalidVolumeError, VolumeLimits
from components.models.bundle import Calibration, DetectorBundle
from components.models.inference import score_volume
from components.preprocess.geometry import axial_axis, resampled_shape, to_input_grid
from components.reports.figures import overlay_strip
from components.scoring.volume import volume_score

OVERLAY_SLICES = 4


class UnknownSiteError(ValueError):
    """A request named a site this model has no calibration for."""


@dataclass
class VolumePredictor:
    bundle: DetectorBundle
    detector: nn.Module
    model_name: str = "unregistered"
    model_version: str = "0"
    sites: dict[str, Calibration] = field(default_factory=dict)  # `brainomaly calibrate --site`
    sites_stamp: dict[str, dict] = field(default_factory=dict)  # each one's calibration run and when it ran

    def calibration(self, site: str | None) -> Calibration:
        """The site's calibration; the training one without a site."""
        if site is None:
            return self.bundle.calibration
        if site not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none yet (`brainomaly calibrate --site NAME --healthy DIR`)"
            raise UnknownSiteError(f"unknown site {site!r}; sites calibrated for this model: {known}")
        return self.sites[site]

    @classmethod
    def from_folder(cls, folder: Path, model_name: str = "unregistered", model_version: str = "0",
                    device: str = "cpu") -> "VolumePredictor":
        bundle, detector = DetectorBundle.load(folder, device)
        return cls(bundle, detector, model_name, model_version)

    def description(self) -> dict:
        """What is served: the registry's name and version, the detector and its calibration."""
        calibration = self.bundle.calibration
        return {
            "name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name,
            "hyperparams": self.bundle.hyperparams, "data_version": self.bundle.data_version,
            "slice_threshold": calibration.slice_threshold, "volume_threshold": calibration.volume_threshold,
            "threshold_percentile": calibration.percentile, "reference_scores": len(calibration.reference_scores),
            "slice_size": self.bundle.preprocess.size, "metrics": self.bundle.metrics,
            "sites": {site: {"slice_threshold": c.slice_threshold, "volume_threshold": c.volume_threshold,
                             "reference_scores": len(c.reference_scores),
                             "calibrated": self.sites_stamp.get(site, {}).get("calibrated"),
                             "calibration_run": self.sites_stamp.get(site, {}).get("run_id")}
                      for site, c in sorted(self.sites.items())},
        }

    def predict(self, data: np.ndarray, affine: np.ndarray, with_map: Literal["nifti", "png"] | None = None,
                site: str | None = None, limits: VolumeLimits = VolumeLimits(), deadline: float | None = None) -> dict:
        """Scores of one (X, Y, Z) skull-stripped volume; slice indices are the input's own;
        verdicts at ``site``'s thresholds (the training calibration's without a site).

        When the recipe resamples along the axial axis, several model slices may come from one
        input slice: that slice's score is the highest of theirs. ``with_map="nifti"`` adds
        ``map``: the anomaly map on the input's grid with its affine, as .nii.gz bytes in a fresh
        header (none of the upload's header text is carried over); ``"png"`` a PNG of the
        ``OVERLAY_SLICES`` most anomalous model slices with their maps over them. ``limits`` bound
        the volume the recipe resamples the scan to, checked before any work; past ``deadline``
        (time.monotonic()) scoring stops with TimeoutError.
        """
        calibration = self.calibration(site)  # an unknown site is refused before any work
        target = self.bundle.preprocess.spacing_mm
        if target is not None:  # 2 voxels of 50 mm become 100 of 1 mm: the grid, not the upload, sets the cost
            limits.check(resampled_shape(data.shape, nib.affines.voxel_sizes(affine), target), "upload",
                         f"resampled to {target} mm, the volume shape")
        slices, scored = score_volume(self.detector, self.bundle.preprocess, data, affine, self.bundle.calibration,
                                      deadline)
        scores = scored.scores
        if not (np.isfinite(scores).all() and np.isfinite(scored.maps).all()):  # never a NaN answer, metric or drift
            raise InvalidVolumeError("the model gave non-finite scores for this scan: are its intensities a scanner's?")
        per_slice: dict[int, float] = {}
        for index, value in zip(slices.slice_numbers.tolist(), scores.tolist()):
            per_slice[index] = max(value, per_slice.get(index, value))
        score = volume_score(scores)
        result = {
            "model": {"name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name},
            "site": site,
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
        if with_map == "nifti":
            result["map"] = map_nifti(to_input_grid(scored.maps[:, 0], slices.geometry), affine)
        elif with_map == "png":
            top = np.argsort(scores)[::-1][:OVERLAY_SLICES]
            titles = [f"slice {slices.slice_numbers[i]}: {scores[i]:.3g}" for i in top]
            result["map"] = overlay_strip(slices.images[top, 0], scored.maps[top, 0], titles, calibration.pixel_threshold)
        return result


def map_nifti(volume: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(volume.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=1)


def _verdict(score: float, threshold: float) -> str:
    return "anomalous" if score > threshold else "normal"

