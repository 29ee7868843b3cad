"""Stage `preprocess`: every subject of both cohorts -> slice shards + slice index + spec.

Volumes are processed in parallel (``preprocess.workers`` processes); each result is written
as soon as it arrives, so memory holds at most one volume per worker. A subject whose files
cannot be used is either reported and skipped or stops the stage (``preprocess.on_error``);
reports/preprocess.json lists what was skipped and why.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.atomic import atomic_path, write_json
from components.data.layouts import Subject, read_dataset
from components.data.nifti_io import load_volume
from components.data.slice_store import write_index, write_shard
from components.data.splits import assign_splits
from components.preprocess.spec import PreprocessSpec
from components.preprocess.volume import ProcessedSlices, preprocess_volume, reference_landmarks
from pipelines.params import Params

log = logging.getLogger(__name__)
PROCESSED_DIR = Path("data/processed")
REPORT = Path("reports/preprocess.json")


class SubjectError(ValueError):
    """One subject's files could not be preprocessed; the message names the subject and why."""


def discover(params: Params, incomplete: list | None = None) -> list[Subject]:
    """Healthy then tumour subjects, each cohort read with its layout (detected when 'auto').
    Cases with a missing file go to ``incomplete`` when it is given, else they raise."""
    data = params.data
    return [
        *read_dataset(params.path(data.healthy_root), data.healthy_layout, data.modality, "healthy", incomplete),
        *read_dataset(params.path(data.tumour_root), data.tumour_layout, data.modality, "tumour", incomplete),
    ]


def process_subject(subject: Subject, spec: PreprocessSpec) -> tuple[ProcessedSlices, list[int]]:
    """Load one subject's files and preprocess them; returns (slices, raw segmentation labels)."""
    image, affine = load_volume(subject.image)
    mask = load_volume(subject.brain_mask)[0] if subject.brain_mask else None
    seg = load_volume(subject.segmentation)[0] if subject.segmentation else None
    lesions = load_volume(subject.lesions)[0] if subject.lesions else None
    slices = preprocess_volume(image, affine, spec, brain_mask=mask, segmentation=seg, lesions=lesions)
    labels = sorted(int(v) for v in np.unique(seg)) if seg is not None else []
    return slices, labels


def assign_all_splits(subjects: list[Subject], params: Params) -> dict[tuple[str, str], str]:
    """Each cohort's subjects to train/val/test: the tumour cohort by ``tumour_split`` where set."""
    settings, splits = params.preprocess, {}
    for cohort in sorted({s.cohort for s in subjects}):
        ratios = (settings.tumour_split if cohort == "tumour" and settings.tumour_split else settings.split).model_dump()
        ids = [s.subject_id for s in subjects if s.cohort == cohort]
        splits.update({(cohort, k): v for k, v in assign_splits(ids, ratios, settings.seed).items()})
    return splits


def histogram_spec(params: Params, subjects: list[Subject], splits: dict) -> tuple[PreprocessSpec, str | None]:
    """The spec, with histogram landmarks from the reference volume when the recipe matches
    histograms; returns (spec, what the reference was)."""
    choice = params.preprocess.reference
    if choice == "none":
        return params.preprocess.spec(), None
    if choice == "standard":
        return standard_scale(params, subjects, splits)
    if choice in ("healthy", "tumour"):
        train = sorted(s.subject_id for s in subjects if s.cohort == choice and splits[(choice, s.subject_id)] == "train")
        if not train:
            raise SubjectError(f"preprocess.histogram_reference={choice}: no {choice} training subject to take it from")
        reference = next(s for s in subjects if s.cohort == choice and s.subject_id == train[0])
        image_path, mask_path, name = reference.image, reference.brain_mask, f"{choice} subject {train[0]}"
    else:
        image_path, mask_path, name = params.path(choice), None, choice
    image, affine = load_volume(image_path)
    mask = load_volume(mask_path)[0] if mask_path else None
    landmarks = reference_landmarks(image, affine, params.preprocess.spec(), mask)
    return params.preprocess.spec(histogram_landmarks=landmarks), name


def _landmarks(subject: Subject, spec: PreprocessSpec) -> np.ndarray:
    image, affine = load_volume(subject.image)
    mask = load_volume(subject.brain_mask)[0] if subject.brain_mask else None
    return np.asarray(reference_landmarks(image, affine, spec, mask))


def standard_scale(params: Params, subjects: list[Subject], splits: dict) -> tuple[PreprocessSpec, str]:
    """Nyul & Udupa's standardisation: the reference landmarks are the mean of every healthy
    training subject's, a population's scale rather than one scan's."""
    train = [s for s in subjects if s.cohort == "healthy" and splits[("healthy", s.subject_id)] == "train"]
    if not train:
        raise SubjectError("preprocess.histogram_reference=standard: no healthy training subject to learn the scale from")
    spec = params.preprocess.spec()
    with ProcessPoolExecutor(max_workers=params.preprocess.workers) as pool:
        landmarks = np.mean(list(pool.map(_landmarks, train, [spec] * len(train))), axis=0)
    return params.preprocess.spec(histogram_landmarks=tuple(float(v) for v in landmarks)), \
        f"the mean of {len(train)} healthy training subjects (standard scale)"


def run(params: Params) -> dict:
    out = params.path(PROCESSED_DIR)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    skipped: list[dict] = []
    subjects = discover(params, incomplete=skipped if params.preprocess.on_error == "skip" else None)
    found = len(subjects) + len(skipped)  # so far, skipped holds the incomplete cases only
    splits = assign_all_splits(subjects, params)
    spec, reference = histogram_spec(params, subjects, splits)
    rows, volumes = [], []
    with ProcessPoolExecutor(max_workers=params.preprocess.workers) as pool:
        futures = {pool.submit(process_subject, s, spec): s for s in subjects}
        for future in tqdm(as_completed(futures), total=len(futures), desc="preprocess", unit="volume"):
            subject = futures[future]
            try:
                slices, labels = future.result()
            except (ValueError, OSError) as err:  # unreadable, corrupt or unusable: never a traceback
                if params.preprocess.on_error == "stop":
                    raise SubjectError(f"{subject.cohort} subject {subject.subject_id}: {err}") from None
                log.warning("skipping %s: %s", subject.subject_id, err)
                skipped.append({"subject": subject.subject_id, "error": str(err)})
                continue
            split = splits[(subject.cohort, subject.subject_id)]
            rows.append(write_shard(out, subject, split, slices))
            volumes.append({"subject": subject.subject_id, "dataset": subject.dataset, "cohort": subject.cohort,
                            "split": split, "seg_labels": labels, "n_slices": len(slices.slice_numbers)})
    if not rows:
        raise SubjectError("no subject could be preprocessed: see reports/preprocess.json")
    index = pd.concat(rows, ignore_index=True).sort_values(["cohort", "dataset", "subject", "slice"], ignore_index=True)
    write_index(out, index)
    with atomic_path(out / "volumes.parquet") as tmp:
        pd.DataFrame(volumes).sort_values(["cohort", "subject"]).to_parquet(tmp, index=False)
    spec.to_json(out / "preprocess_spec.json")
    counts = {"/".join(k): n for k, n in index.groupby(["cohort", "dataset", "split"]).size().to_dict().items()}
    report = {"histogram_reference": reference, "volumes": found, "processed": len(volumes), "skipped": skipped, "slices": len(index), "by_split": counts}
    write_json(params.path(REPORT), report)
    return report
