"""Volume in, verdicts out: the detector bundle applied to one uploaded scan.

Free of Ray and HTTP so it can be tested and reused directly; it calls the very same
``components.preprocess`` code that produced the training slices.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import nibabel as nib
import numpy as np
from torch import nn

from components.data.nifti_io import InvalidVolumeError, VolumeLimits, check_finite
from components.models.bundle import Calibration, DetectorBundle
from components.models.inference import Scored, score_volumes
from components.preprocess.geometry import axial_axis, resampled_shape, to_input_grid
from components.preprocess.volume import ProcessedSlices, preprocess_volume
from components.reports.figures import overlay_strip
from components.scoring.volume import volume_score

OVERLAY_SLICES = 4


class UnknownSiteError(ValueError):
    """A request named a site this model has no calibration for."""


class SiteUnavailableError(RuntimeError):
    """A request named a site whose calibration exists but could not be loaded."""


class Upload(NamedTuple):
    """One scan to score and what its client asked for."""

    data: np.ndarray  # (X, Y, Z) skull-stripped
    affine: np.ndarray
    with_map: Literal["nifti", "png"] | None = None
    site: str | None = None  # verdicts at this site's calibration; None: the training one


@dataclass
class VolumePredictor:
    bundle: DetectorBundle
    detector: nn.Module
    model_name: str = "unregistered"
    model_version: str = "0"
    sites: dict[str, Calibration] = field(default_factory=dict)  # `brainomaly calibrate --site`
    sites_stamp: dict[str, dict] = field(default_factory=dict)  # each one's registry record (run, when, scans)
    broken_sites: dict[str, str] = field(default_factory=dict)  # calibrated, but not loadable: why

    def calibration(self, site: str | None) -> Calibration:
        """The site's calibration; the training one without a site."""
        if site is None:
            return self.bundle.calibration
        if site in self.broken_sites:
            raise SiteUnavailableError(f"site {site!r} is calibrated for this model, but {self.broken_sites[site]}; "
                                       "the server log says more, and `brainomaly calibrate` again mends it")
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
                             "reference_scores": len(c.reference_scores), "scans": c.scans,
                             "guaranteed_false_alarm_rates": c.guaranteed_rates,
                             "calibrated": self.sites_stamp.get(site, {}).get("calibrated"),
                             "calibration_run": self.sites_stamp.get(site, {}).get("run_id")}
                      for site, c in sorted(self.sites.items())},
            "broken_sites": {site: {"error": reason, "calibrated": self.sites_stamp.get(site, {}).get("calibrated"),
                                    "calibration_run": self.sites_stamp.get(site, {}).get("run_id")}
                             for site, reason in sorted(self.broken_sites.items())},
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
        (answer,) = self.predict_together([Upload(data, affine, with_map, site)], limits, deadline)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def predict_together(self, uploads: list[Upload], limits: VolumeLimits = VolumeLimits(),
                         deadline: float | None = None) -> list[dict | Exception]:
        """Each upload's answer (as ``predict`` gives it) or the error that refuses it, their slices
        scored in shared batches. An upload's answer is the one it gets alone: a neighbour's
        slices do not change its scores and a neighbour's bad scan does not fail it. Past
        ``deadline`` all stop with TimeoutError."""
        answers: list = [None] * len(uploads)
        prepared: dict[int, ProcessedSlices] = {}
        for i, upload in enumerate(uploads):
            try:
                prepared[i] = self.prepare(upload, limits)
            except (InvalidVolumeError, UnknownSiteError, SiteUnavailableError) as err:
                answers[i] = err
        scored = score_volumes(self.detector, list(prepared.values()), self.bundle.calibration, deadline)
        for (i, slices), scores in zip(prepared.items(), scored):
            try:
                answers[i] = self.answer(uploads[i], slices, scores)
            except InvalidVolumeError as err:
                answers[i] = err
        return answers

    def prepare(self, upload: Upload, limits: VolumeLimits) -> ProcessedSlices:
        """The upload through the model's recipe, refused first for an unknown site, non-finite
        voxels or a volume the recipe would resample past ``limits``."""
        self.calibration(upload.site)
        check_finite(upload.data, "upload")
        target = self.bundle.preprocess.spacing_mm
        if target is not None:  # 2 voxels of 50 mm become 100 of 1 mm: the grid, not the upload, sets the cost
            limits.check(resampled_shape(upload.data.shape, nib.affines.voxel_sizes(upload.affine), target), "upload",
                         f"resampled to {target} mm, the volume shape")
        return preprocess_volume(upload.data, upload.affine, self.bundle.preprocess)

    def answer(self, upload: Upload, slices: ProcessedSlices, scored: Scored) -> dict:
        """The response to ``upload`` from its scored slices."""
        calibration = self.calibration(upload.site)
        scores = scored.scores
        if not (np.isfinite(scores).all() and np.isfinite(scored.maps).all()):  # never a NaN answer, metric or drift
            raise InvalidVolumeError("the model gave non-finite scores for this scan: are its intensities a scanner's?")
        per_slice: dict[int, float] = {}
        for index, value in zip(slices.slice_numbers.tolist(), scores.tolist()):
            per_slice[index] = max(value, per_slice.get(index, value))
        score = volume_score(scores)
        result = {
            "model": {"name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name},
            "site": upload.site,
            "data_version": self.bundle.data_version,
            "threshold": calibration.slice_threshold,
            "volume_threshold": calibration.volume_threshold,
            "volume_score": score,
            "volume_verdict": _verdict(score, calibration.volume_threshold),
            "slices_scored": len(per_slice),
            "slices_skipped": int(upload.data.shape[axial_axis(upload.affine)]) - len(per_slice),
            "slices": [
                {"index": i, "score": s, "verdict": _verdict(s, calibration.slice_threshold)} for i, s in sorted(per_slice.items())
            ],
        }
        if upload.with_map == "nifti":
            result["map"] = map_nifti(to_input_grid(scored.maps[:, 0], slices.geometry), upload.affine)
        elif upload.with_map == "png":
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

