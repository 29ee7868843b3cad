"""DICOM series in, DICOM Segmentation and Parametric Map out, with pydicom and highdicom.

A series arrives as the bytes of its ``.dcm`` files (a zip of them, or the files themselves) and
is read in memory: nothing reaches a disk. It must be one complete MR series on a regular grid;
highdicom sorts its images along the slice normal and applies each one's rescale slope and
intercept. The result is the same ``(data, affine)`` pair a NIfTI upload gives (RAS+ mm), plus
the images' headers, which the Segmentation and Parametric Map reference so that they land
over the source series in a DICOM viewer.

Error messages name files by their place in the upload and series by their number, never by a
patient's name, identifiers or any free text of the headers.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Iterable

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage, generate_uid

from components.data.nifti_io import VOXEL_MM, VolumeLimits, check_finite
from components.errors import InvalidVolumeError

ZIP_MAGIC = b"PK\x03\x04"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient axes point left and posterior, NIfTI's right and anterior
SOFTWARE = "brainomaly"


class InvalidSeriesError(InvalidVolumeError):
    """The files given are not one complete, readable MR series; the message says why."""


@dataclass(frozen=True)
class DicomSource:
    """What derived objects reference: the headers of a series' images (pixel data dropped) and
    the grid of the volume read from them, in the patient's (LPS) frame of reference."""

    headers: tuple[Dataset, ...]
    geometry: hd.VolumeGeometry


def is_dicom(payload: bytes) -> bool:
    """A zip (of a series' files) or a DICOM Part 10 file, by their magic bytes."""
    return payload[:4] == ZIP_MAGIC or payload[128:132] == b"DICM"


def files_from_zip(payload: bytes, max_uncompressed_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    """The (name, bytes) of each file in a zip, bounded in count and in inflated size (a zip's
    declared sizes may lie, so every member is read with a cap). Folders and macOS metadata are
    skipped, as is a DICOMDIR: it indexes the files, it is not an image."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_metadata(m.filename)]
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise InvalidSeriesError(f"upload: not a readable zip file ({err})") from None
    if not members:
        raise InvalidSeriesError("upload: the zip holds no files")
    if len(members) > max_files:
        raise InvalidSeriesError(f"upload: the zip holds {len(members)} files, over the limit of {max_files} images a series")
    files, total = [], 0
    for number, member in enumerate(members, 1):
        try:
            with archive.open(member) as stream:
                data = stream.read(max_uncompressed_bytes - total + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as err:
            raise InvalidSeriesError(f"upload: file {number} of the zip cannot be extracted ({err})") from None
        total += len(data)
        if total > max_uncompressed_bytes:
            raise InvalidSeriesError(f"upload: the zip inflates to more than {max_uncompressed_bytes // 2**20} MiB")
        files.append((f"file {number} of the zip", data))
    return files


def _is_metadata(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".") or base.upper() == "DICOMDIR"


def read_series(files: Iterable[tuple[str, bytes]], limits: VolumeLimits = VolumeLimits(),
                ) -> tuple[np.ndarray, np.ndarray, DicomSource]:
    """One MR series from the bytes of its files as (float32 data, RAS+ affine, its source),
    checked before a pixel is decoded: one series, MR, single-frame images of one size, a grid
    within ``limits``; then decoded, sorted along the slice normal and checked for missing or
    doubled slices. ``data`` is (slice, row, column)."""
    images = [_parse(name, data) for name, data in files]
    if not images:
        raise InvalidSeriesError("upload: no DICOM files")
    _check_one_mr_series(images)
    rows, columns = _one_value(images, "Rows"), _one_value(images, "Columns")
    limits.check((len(images), rows, columns), "series", "grid (images, rows, columns)")
    if len(images) < 2:
        raise InvalidSeriesError("series: a single image is not a volume; send every image of the series")
    try:
        volume = hd.get_volume_from_series(images, dtype=np.float32)
    except Exception as err:  # highdicom says what is irregular: spacing, orientation, duplicates
        raise InvalidSeriesError(f"series {_number(images)}: its images do not form one regular volume "
                                 f"({_plain(err)}{_gaps(images)}); is an image missing or from another acquisition?") from None
    sizes = np.array([*volume.spacing])
    if not np.all((sizes >= VOXEL_MM[0]) & (sizes <= VOXEL_MM[1])):
        raise InvalidSeriesError(f"series {_number(images)}: voxel sizes {np.round(sizes, 4).tolist()} mm are outside "
                                 f"{VOXEL_MM[0]}-{VOXEL_MM[1]} mm: not an MRI scan's")
    data = np.ascontiguousarray(volume.array, dtype=np.float32)
    check_finite(data, f"series {_number(images)}")
    for image in images:  # the headers stay, for the references; the pixels are in ``data`` now
        del image.PixelData
    ras = LPS_TO_RAS @ volume.affine  # the volume's own voxel order, in RAS+ mm as NIfTI has it
    return data, ras, DicomSource(tuple(images), volume.get_geometry())


def _parse(name: str, data: bytes) -> Dataset:
    try:
        image = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise InvalidSeriesError(f"{name} is not a DICOM file") from None
    except Exception as err:  # a truncated or malformed element; its text may quote a header value
        raise InvalidSeriesError(f"{name} is not a readable DICOM file ({type(err).__name__})") from None
    if "PixelData" not in image:
        raise InvalidSeriesError(f"{name} holds no image (no pixel data): send the series' images only")
    return image


def _gaps(images: list[Dataset]) -> str:
    """Where slices are missing, when the images share one orientation: the gaps found."""
    try:
        row, column = np.reshape(np.asarray(images[0].ImageOrientationPatient, float), (2, 3))
        positions = np.sort([np.dot(np.cross(row, column), np.asarray(i.ImagePositionPatient, float)) for i in images])
    except (AttributeError, ValueError, TypeError):
        return ""
    steps = np.diff(positions)
    usual = float(np.median(steps))
    gaps = int(np.sum(steps > 1.5 * usual)) if usual > 0 else 0
    return f"; {gaps} gap(s) wider than the usual {usual:.3g} mm between slices" if gaps else ""


def _check_one_mr_series(images: list[Dataset]) -> None:
    series = {image.get("SeriesInstanceUID") for image in images}
    if len(series) != 1:
        numbers = sorted({str(image.get("SeriesNumber", "?")) for image in images})
        raise InvalidSeriesError(f"upload: its images come from {len(series)} series (series numbers "
                                 f"{', '.join(numbers)}): send one series at a time")
    modalities = {str(image.get("Modality", "")) for image in images}
    if modalities != {"MR"}:
        raise InvalidSeriesError(f"series {_number(images)}: modality {'/'.join(sorted(modalities)) or 'missing'}, "
                                 "not MR: only MR series are scored")
    if any(int(image.get("NumberOfFrames", 1) or 1) > 1 for image in images):
        raise InvalidSeriesError(f"series {_number(images)}: multi-frame (enhanced) MR images are not read yet; "
                                 "export the series as classic single-frame MR images")
    uids = [image.get("SOPInstanceUID") for image in images]
    if len(set(uids)) != len(uids):
        raise InvalidSeriesError(f"series {_number(images)}: {len(uids) - len(set(uids))} images are sent twice")


def _one_value(images: list[Dataset], keyword: str) -> int:
    values = {int(image.get(keyword, 0) or 0) for image in images}
    if len(values) != 1 or 0 in values:
        raise InvalidSeriesError(f"series {_number(images)}: its images differ in {keyword} ({sorted(values)}): "
                                 "not one volume")
    return values.pop()


def _number(images: list[Dataset]) -> str:
    return str(images[0].get("SeriesNumber", "?"))


def _plain(err: Exception) -> str:
    """An error's first line, short: library messages may quote header values at length."""
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


@dataclass(frozen=True)
class Derived:
    """What a derived object says of itself: the model behind it, and the verdict it carries."""

    detector: str  # the model's detector, e.g. denoising_ae
    version: str  # the registry version
    description: str  # the verdict, in at most 64 characters (DICOM's LO)
    series_number: int = 9000  # numbers a viewer lists the derived series under


def segmentation(source: DicomSource, mask: np.ndarray, derived: Derived) -> bytes:
    """A DICOM Segmentation (binary, one segment "anomaly") of ``mask``, a boolean volume on the
    source's grid, referencing the source's images, in their study and frame of reference."""
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(derived))
    seg = hd.seg.Segmentation(
        source_images=source.headers, pixel_array=source.geometry.with_array(mask.astype(np.uint8)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        omit_empty_frames=False,  # every source image gets its frame: a normal scan has an empty SEG, not none
        content_label="ANOMALY", content_description=derived.description[:64],
        **_new_instance(derived, "anomaly segmentation"))
    return _to_bytes(seg)


def parametric_map(source: DicomSource, values: np.ndarray, derived: Derived, threshold: float) -> bytes:
    """A DICOM Parametric Map of the anomaly map ``values`` (float, on the source's grid), windowed
    from 0 to twice the pixel ``threshold`` so what the SEG marks shows bright."""
    values = values.astype(np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ANOMALY", lut_explanation="anomaly score (above the threshold: anomalous)",
        unit=codes.UCUM.NoUnits, value_range=(float(values.min()), float(values.max())), slope=1.0, intercept=0.0)
    pmap = hd.pm.ParametricMap(
        source_images=source.headers, pixel_array=source.geometry.with_array(values),
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=float(threshold),
                                                         window_width=float(2 * threshold) or 1.0)],
        content_label="ANOMALY", content_description=derived.description[:64],
        **_new_instance(derived, "anomaly map"))
    return _to_bytes(pmap)


def _algorithm(derived: Derived) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=f"{SOFTWARE} {derived.detector}"[:64],
                                              family=codes.cid7162.ArtificialIntelligence, version=derived.version[:64])


def _new_instance(derived: Derived, what: str) -> dict:
    return {"series_instance_uid": generate_uid(), "series_number": derived.series_number,
            "sop_instance_uid": generate_uid(), "instance_number": 1, "manufacturer": SOFTWARE,
            "manufacturer_model_name": derived.detector[:64], "software_versions": derived.version[:64],
            "device_serial_number": "0", "series_description": f"{SOFTWARE} {what}"[:64]}


def _to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def volume_to_series(data: np.ndarray, affine: np.ndarray, *, study_uid: str | None = None, series_number: int = 1,
                     description: str = "T2", patient_id: str = "PHANTOM", body_part: str = "BRAIN") -> list[bytes]:
    """An (X, Y, Z) RAS+ volume as the files of a classic single-frame MR series, as a scanner
    sends one: axial images (slices foot to head, rows anterior to posterior, columns right to
    left), 16-bit with a rescale slope. For phantoms in a PACS, and for tests."""
    import nibabel as nib  # only this writer needs it; reading needs none

    volume = hd.Volume.from_nibabel(nib.Nifti1Image(np.asarray(data, np.float32), affine),
                                    frame_of_reference_uid=generate_uid()).to_patient_orientation("HPL")
    low, high = float(volume.array.min()), float(volume.array.max())
    slope = (high - low) / 65535 or 1.0
    stored = np.round((volume.array - low) / slope).astype(np.uint16)
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    orientation = volume.get_plane_orientation()[0].ImageOrientationPatient
    files = []
    for index in range(stored.shape[0]):
        image = Dataset()
        image.file_meta = pydicom.dataset.FileMetaDataset()
        image.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        image.SOPClassUID, image.SOPInstanceUID = MRImageStorage, generate_uid()
        image.StudyInstanceUID, image.SeriesInstanceUID = study_uid, series_uid
        image.FrameOfReferenceUID = volume.frame_of_reference_uid
        image.Modality, image.BodyPartExamined, image.SeriesDescription = "MR", body_part, description
        image.PatientName, image.PatientID, image.PatientBirthDate, image.PatientSex = f"{patient_id}^", patient_id, "", "O"
        image.StudyDate, image.StudyTime, image.StudyID, image.AccessionNumber = "20260101", "120000", "1", ""
        image.ReferringPhysicianName, image.Manufacturer = "", SOFTWARE
        image.SeriesNumber, image.InstanceNumber = series_number, index + 1
        image.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        image.ScanningSequence, image.SequenceVariant, image.ScanOptions, image.MRAcquisitionType = "SE", "NONE", "", "2D"
        image.ImagePositionPatient = list(volume.get_plane_position(index)[0].ImagePositionPatient)
        image.ImageOrientationPatient = list(orientation)
        image.PixelSpacing = [float(s) for s in volume.pixel_spacing]
        image.SliceThickness = image.SpacingBetweenSlices = float(volume.spacing_between_slices)
        image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
        image.Rows, image.Columns = stored.shape[1:]
        image.BitsAllocated, image.BitsStored, image.HighBit, image.PixelRepresentation = 16, 16, 15, 0
        image.RescaleSlope, image.RescaleIntercept, image.RescaleType = f"{slope:.10g}", f"{low:.10g}", "US"
        image.PixelData = stored[index].tobytes()
        files.append(_to_bytes(image))
    return files


def series_zip(files: list[bytes]) -> bytes:
    """The files of a series as one zip, the way ``POST /v1/predict`` takes a series."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, data in enumerate(files, 1):
            archive.writestr(f"IM{number:05d}.dcm", data)
    return buffer.getvalue()
