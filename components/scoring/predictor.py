"""Volume in, verdicts out: the detector bundle applied to one uploaded scan.

Free of Ray and HTTP so it can be tested and reused directly; it calls the very same
``components.preprocess`` code that produced the training slices.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import nibabel as nib
import numpy as np
from isal import igzip
from torch import nn

from components.data.dicom_io import Derived, DicomSource, parametric_map, segmentation
from components.data.nifti_io import VolumeLimits, check_finite
from components.errors import InvalidVolumeError
from components.machine import native_bf16
from components.metrics.postprocess import segment, smooth_subject
from components.models.bundle import DetectorBundle
from components.models.calibration import Calibration
from components.models.inference import Scored, score_volumes
from components.preprocess.geometry import axial_axis, resampled_shape, to_input_grid
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import ProcessedSlices, preprocess_volume
from components.reports.figures import overlay_strip
from components.scoring.thinning import every_kth, fill_between, slice_step, take
from components.scoring.volume import volume_score

OVERLAY_SLICES = 4
MapFormat = Literal["nifti", "png", "dicom-seg", "dicom-pmap"]
DICOM_MAPS = ("dicom-seg", "dicom-pmap")  # derived objects of a DICOM source series
log = logging.getLogger(__name__)


class UnknownSiteError(ValueError):
    """A request named a site this model has no calibration for."""


class SiteUnavailableError(RuntimeError):
    """A request named a site whose calibration exists but could not be loaded."""


class Upload(NamedTuple):
    """One scan to score and what its client asked for."""

    data: np.ndarray | None  # (X, Y, Z) skull-stripped; None where its slices were prepared elsewhere
    affine: np.ndarray
    with_map: MapFormat | None = None
    site: str | None = None  # verdicts at this site's calibration; None: the training one
    source: DicomSource | None = None  # the series a DICOM upload was read from


@dataclass
class VolumePredictor:
    bundle: DetectorBundle
    detector: nn.Module
    model_name: str = "unregistered"
    model_version: str = "0"
    sites: dict[str, Calibration] = field(default_factory=dict)  # `brainomaly calibrate --site`
    sites_stamp: dict[str, dict] = field(default_factory=dict)  # each one's registry record (run, when, scans)
    broken_sites: dict[str, str] = field(default_factory=dict)  # calibrated, but not loadable: why
    min_component_voxels: int = 1  # a DICOM SEG drops smaller lesions (evaluate.min_component_voxels)
    thin_slices: bool = False  # score slices about a model pixel apart, maps between interpolated (serve.thin_slices)

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
        if bundle.calibration.precision == "bf16" and not native_bf16(detector.device):
            # its thresholds hold in bf16: it scores as calibrated, at the cost of emulating bf16
            log.warning("%s v%s was calibrated in bf16, which %s emulates: it scores in bf16 all the same, slower "
                        "than in fp32", model_name, model_version, detector.device)
        return cls(bundle, detector, model_name, model_version)

    def description(self) -> dict:
        """What is served: the registry's name and version, the detector and its calibration."""
        calibration = self.bundle.calibration
        return {
            "name": self.model_name, "version": self.model_version, "detector": self.bundle.model_name,
            "hyperparams": self.bundle.hyperparams, "data_version": self.bundle.data_version,
            "slice_threshold": calibration.slice_threshold, "volume_threshold": calibration.volume_threshold,
            "threshold_percentile": calibration.percentile, "reference_scores": len(calibration.reference_scores),
            "precision": calibration.precision,
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

    def predict(self, data: np.ndarray, affine: np.ndarray, with_map: MapFormat | None = None,
                site: str | None = None, limits: VolumeLimits = VolumeLimits(), deadline: float | None = None,
                source: DicomSource | None = None) -> dict:
        """Scores of one (X, Y, Z) skull-stripped volume; slice indices are the input's own;
        verdicts at ``site``'s thresholds (the training calibration's without a site).

        When the recipe resamples along the axial axis, several model slices may come from one
        input slice: that slice's score is the highest of theirs. With ``thin_slices`` only the
        slices scored are listed (on a 1 mm scan at 64 px, every other one); maps cover them all.
        ``with_map="nifti"`` adds ``map``: the anomaly map on the input's grid with its affine, as
        .nii.gz bytes in a fresh header (none of the upload's header text is carried over);
        ``"png"`` a PNG of the ``OVERLAY_SLICES`` most anomalous model slices with their maps over
        them; for a DICOM ``source``, ``"dicom-seg"`` a DICOM Segmentation of the map above the
        pixel threshold and ``"dicom-pmap"`` the map as a DICOM Parametric Map, both over the
        source series and carrying the verdict. ``limits`` bound the volume the recipe resamples
        the scan to, checked before any work; past ``deadline``
        (time.monotonic()) scoring stops with TimeoutError.
        """
        (answer,) = self.predict_together([Upload(data, affine, with_map, site, source)], limits, deadline)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def predict_together(self, uploads: list[Upload], limits: VolumeLimits = VolumeLimits(),
                         deadline: float | None = None) -> list[dict | Exception]:
        """Each upload's answer (as ``predict`` gives it) or the error that refuses it, their slices
        scored in shared batches. An upload's answer is the one it gets alone: a neighbour's
        slices do not change its scores and a neighbour's bad scan does not fail it. Past
        ``deadline`` all stop with TimeoutError. An answer's ``seconds`` says how long its
        preprocessing, the shared scoring pass and its verdicts and maps took."""
        answers: list = [None] * len(uploads)
        prepared: dict[int, ProcessedSlices] = {}
        seconds: list[dict[str, float]] = [{} for _ in uploads]  # each upload's time, by stage
        for i, upload in enumerate(uploads):
            start = time.perf_counter()
            try:
                prepared[i] = self.prepare(upload, limits)
            except (InvalidVolumeError, UnknownSiteError, SiteUnavailableError) as err:
                answers[i] = err
            seconds[i]["preprocess"] = time.perf_counter() - start
        done = self.score_prepared([(uploads[i], slices) for i, slices in prepared.items()], deadline)
        for i, answer in zip(prepared, done):
            answers[i] = answer if isinstance(answer, Exception) else answer | {"seconds": seconds[i] | answer["seconds"]}
        return answers

    def score_prepared(self, prepared: list[tuple[Upload, ProcessedSlices]],
                       deadline: float | None = None) -> list[dict | Exception]:
        """Each prepared upload's answer, or the error that refuses it, their slices scored in
        one shared pass; ``seconds`` in an answer: the pass's, and its own verdicts' and maps'."""
        start = time.perf_counter()
        picks = [self.scored_slices(slices) for _, slices in prepared]
        scored = score_volumes(self.detector, [take(slices, picked) for (_, slices), picked in zip(prepared, picks)],
                               self.bundle.calibration, deadline)
        shared = time.perf_counter() - start  # one pass for all: each waited for all of it
        answers: list[dict | Exception] = []
        for (upload, slices), picked, scores in zip(prepared, picks, scored):
            start = time.perf_counter()
            try:
                answer = self.answer(upload, slices, picked, scores)
            except InvalidVolumeError as err:
                answers.append(err)
                continue
            answers.append(answer | {"seconds": {"score": shared, "answer": time.perf_counter() - start}})
        return answers

    def slice_step(self, slices: ProcessedSlices) -> int:
        """k: the network scores every k-th model slice; 1 without ``thin_slices``
        (components/scoring/thinning.py)."""
        return slice_step(slices.spacing_mm) if self.thin_slices else 1

    def scored_slices(self, slices: ProcessedSlices) -> np.ndarray:
        """Which of the model slices the network scores: every ``slice_step``-th, the last included."""
        return every_kth(len(slices.images), self.slice_step(slices))

    def prepare(self, upload: Upload, limits: VolumeLimits) -> ProcessedSlices:
        """The upload through the model's recipe, refused first for an unknown site or a DICOM
        map without a DICOM source, then as ``prepare_volume`` refuses."""
        self.calibration(upload.site)
        if upload.with_map in DICOM_MAPS and upload.source is None:
            raise InvalidVolumeError(f"map={upload.with_map} is drawn over the series it was read from: "
                                     "upload the scan as a DICOM series (a zip of its files)")
        return prepare_volume(upload.data, upload.affine, self.bundle.preprocess, limits)

    def answer(self, upload: Upload, slices: ProcessedSlices, picked: np.ndarray, scored: Scored) -> dict:
        """The response to ``upload`` from the scores of its model slices at ``picked``; its maps
        cover every model slice, interpolated between those scored."""
        calibration = self.calibration(upload.site)
        scores = scored.scores
        if not (np.isfinite(scores).all() and np.isfinite(scored.maps).all()):  # never a NaN answer, metric or drift
            raise InvalidVolumeError("the model gave non-finite scores for this scan: are its intensities a scanner's?")
        if upload.with_map is not None:
            scored = scored._replace(maps=fill_between(scored.maps, slices.geometry.kept, picked))
        per_slice: dict[int, float] = {}
        for index, value in zip(slices.slice_numbers[picked].tolist(), scores.tolist()):
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
            "slices_skipped": int(slices.geometry.input_shape[axial_axis(upload.affine)]) - len(per_slice),
            "slice_step": self.slice_step(slices),  # every k-th model slice was scored
            "slices": [
                {"index": i, "score": s, "verdict": _verdict(s, calibration.slice_threshold)} for i, s in sorted(per_slice.items())
            ],
        }
        if upload.with_map == "nifti":
            result["map"] = map_nifti(to_input_grid(scored.maps[:, 0], slices.geometry), upload.affine)
        elif upload.with_map in DICOM_MAPS:
            result["map"] = self.dicom_map(upload, slices, scored, result, calibration)
        elif upload.with_map == "png":
            top = np.argsort(scores)[::-1][:OVERLAY_SLICES]
            titles = [f"slice {slices.slice_numbers[picked[i]]}: {scores[i]:.3g}" for i in top]
            smoothed = smoothed_maps(scored, slices, calibration)
            result["map"] = overlay_strip(slices.images[picked[top], 0], smoothed[picked[top], 0], titles,
                                          calibration.pixel_threshold)
        return result


    def dicom_map(self, upload: Upload, slices: ProcessedSlices, scored: Scored, result: dict,
                  calibration: Calibration) -> bytes:
        """The SEG or Parametric Map over the source series, drawn as the pixel-wise evaluation
        draws its segmentations (the map smoothed in 3-D inside the brain, above the pixel
        threshold, small components dropped), with the verdict in its content description."""
        verdict = (f"{result['volume_verdict']}: score {result['volume_score']:.4g}, "
                   f"threshold {calibration.volume_threshold:.4g}")
        derived = Derived(self.bundle.model_name, f"{self.model_name} v{self.model_version}", verdict)
        if upload.with_map == "dicom-seg":
            return segmentation(upload.source, self.lesion_mask(slices, scored, calibration), derived)
        smoothed = smoothed_maps(scored, slices, calibration)[:, 0]
        return parametric_map(upload.source, to_input_grid(smoothed, slices.geometry), derived, calibration.pixel_threshold)

    def lesion_mask(self, slices: ProcessedSlices, scored: Scored, calibration: Calibration) -> np.ndarray:
        """The (X, Y, Z) lesions a DICOM SEG draws, on the input's grid: ``scored``'s maps (one a
        model slice) smoothed in 3-D inside the brain, above the pixel threshold, components
        smaller than ``min_component_voxels`` dropped."""
        smoothed = smoothed_maps(scored, slices, calibration)[:, 0]
        mask = segment(smoothed, calibration.pixel_threshold, self.min_component_voxels)
        return to_input_grid(mask.astype(np.float32), slices.geometry) > 0.5


def prepare_volume(data: np.ndarray, affine: np.ndarray, spec: PreprocessSpec, limits: VolumeLimits,
                   name: str = "upload") -> ProcessedSlices:
    """A scan through a model's recipe, refused first for non-finite voxels or a volume the recipe
    would resample past ``limits``."""
    check_finite(data, name)
    if spec.spacing_mm is not None:  # 2 voxels of 50 mm become 100 of 1 mm: the grid, not the upload, sets the cost
        limits.check(resampled_shape(data.shape, nib.affines.voxel_sizes(affine), spec.spacing_mm), name,
                     f"resampled to {spec.spacing_mm} mm, the volume shape")
    return preprocess_volume(data, affine, spec)


def map_nifti(volume: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(volume.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    return igzip.compress(image.to_bytes(), compresslevel=1)


def smoothed_maps(scored: Scored, slices: ProcessedSlices, calibration: Calibration) -> np.ndarray:
    """The scan's maps post-processed in the units of ``calibration``'s pixel threshold."""
    return smooth_subject(scored.maps, slices.brain, calibration.pixel_median,
                          calibration.scoring.median_spacing(slices.spacing_mm))


def _verdict(score: float, threshold: float) -> str:
    return "anomalous" if score > threshold else "normal"

