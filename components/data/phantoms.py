"""Synthetic subjects built on the real MNI152 template, written in real HCP and BraTS layouts.

Model of one subject (all steps seeded, so a seed gives the same files on any machine):

1. Tissue maps: the ICBM152 grey- and white-matter probability maps and brain mask that ship
   with nilearn, resampled to ``voxel_size_mm``; CSF = brain mask - GM - WM.
2. Anatomy varies by a smooth random deformation (coarse Gaussian noise upsampled, peak
   ``deformation_mm``) applied to every map.
3. Tumour (BraTS subjects): a centre in white matter and a radius drawn log-uniformly in
   ``tumour_radius_mm`` (from a few voxels to a large glioma). Mass effect: the tissue around it
   is pushed outward along the radius, by up to ``mass_effect`` x the radius at the centre and
   fading over about two radii (smooth, and fold-free outside the tumour). Then a lumpy sphere of edema
   (label 2) around an enhancing rim (4) around a necrotic core (1).
4. Other lesions (BraTS subjects, labelled in ``<case>_lesions.nii.gz``, never in ``seg``, so a
   detector can be scored on lesion kinds it was never tuned for): with probability ``foci_p``,
   1-6 small bright foci in white matter (label 1, radius 1-3 mm, bright on T2 and FLAIR like
   white-matter hyperintensities); with probability ``cavity_p``, a resection cavity (label 2,
   radius 5-12 mm) whose tissue is replaced by CSF, so it is bright on T2 and dark on FLAIR
   and T1.
5. Contrast: the four BraTS contrasts from the same tissue maps (T2: CSF bright, WM dark; T1 and
   T1ce the reverse; FLAIR: CSF suppressed), jittered a few percent per subject; each tumour
   label and focus blended in with its typical brightness per contrast (T1ce: enhancing rim
   brightest; FLAIR: edema bright), with soft edges.
6. Acquisition: a smooth multiplicative bias field and Gaussian noise, inside the brain only
   (the images are skull-stripped, as HCP's ``*_brain`` and BraTS files are).
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from components.data.layouts import brats_path, hcp_path
from components.data.nifti_io import save_volume

log = logging.getLogger(__name__)

# Relative intensity of each tissue / tumour label per contrast (WM of T1 = 0.8 for scale).
TISSUE_CONTRAST = {  # modality: (csf, gm, wm)
    "t2": (1.00, 0.60, 0.40),
    "t1": (0.20, 0.55, 0.80),
    "t1ce": (0.20, 0.55, 0.80),
    "flair": (0.10, 0.65, 0.50),
}
TUMOUR_CONTRAST = {  # modality: {label: intensity}; 1 necrosis, 2 edema, 4 enhancing rim
    "t2": {1: 0.95, 2: 0.85, 4: 0.70},
    "t1": {1: 0.25, 2: 0.45, 4: 0.50},
    "t1ce": {1: 0.25, 2: 0.45, 4: 1.00},
    "flair": {1: 0.55, 2: 0.90, 4: 0.75},
}
FOCUS_CONTRAST = {"t2": 0.90, "t1": 0.45, "t1ce": 0.45, "flair": 0.95}  # small bright foci
LESION_LABELS = {"focus": 1, "cavity": 2}  # values of <case>_lesions.nii.gz
SCANNER_SCALE = 1000.0  # written intensities are in arbitrary scanner units


@dataclass(frozen=True)
class PhantomSpec:
    """Parameters of the phantom population (the ``phantoms`` section of params.yaml)."""

    seed: int = 2021
    n_healthy: int = 30
    n_tumour: int = 20
    voxel_size_mm: float = 2.0
    deformation_mm: float = 3.0
    bias_strength: float = 0.25
    noise_std: float = 0.02
    tumour_radius_mm: tuple[float, float] = (3.0, 30.0)
    mass_effect: float = 0.4
    foci_p: float = 0.5
    cavity_p: float = 0.3

    def __post_init__(self) -> None:
        if min(self.n_healthy, self.n_tumour) < 1:  # the pipeline's splits need 3 of each: the data gate says so
            raise ValueError(f"phantoms.n_healthy and n_tumour must be >= 1, got {self.n_healthy} and {self.n_tumour}")
        if not 1.0 <= self.voxel_size_mm <= 4.0:
            raise ValueError(f"phantoms.voxel_size_mm must lie in [1, 4], got {self.voxel_size_mm}")
        for name in ("deformation_mm", "bias_strength", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"phantoms.{name} must be >= 0, got {getattr(self, name)}")
        low, high = self.tumour_radius_mm
        if not 0 < low <= high:
            raise ValueError(f"phantoms.tumour_radius_mm must satisfy 0 < low <= high, got {list(self.tumour_radius_mm)}")
        if not 0.0 <= self.mass_effect <= 1.0:
            raise ValueError(f"phantoms.mass_effect must lie in [0, 1] (a fraction of the radius), got {self.mass_effect}")
        for name in ("foci_p", "cavity_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"phantoms.{name} is a probability in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Atlas:
    """Tissue fractions on a RAS grid: each (X, Y, Z) float32 in [0, 1]; affine in mm."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray
    voxel_size_mm: float


@functools.lru_cache(maxsize=2)
def load_atlas(voxel_size_mm: float) -> Atlas:
    """The MNI152 tissue maps shipped in nilearn's wheel, resampled to ``voxel_size_mm``."""
    from nilearn import datasets  # imported here: it is slow to import and only needed here

    maps = [
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    ]
    factor = 1.0 / voxel_size_mm
    gm, wm, mask = (ndimage.zoom(np.asarray(m.dataobj, np.float32), factor, order=1) for m in maps)
    mask = (mask > 0.5).astype(np.float32)
    gm, wm = np.clip(gm, 0, 1) * mask, np.clip(wm, 0, 1) * mask
    tissue = np.maximum(gm + wm, 1.0)
    gm, wm = gm / tissue, wm / tissue
    csf = np.clip(mask - gm - wm, 0, 1)
    affine = maps[0].affine @ np.diag([voxel_size_mm, voxel_size_mm, voxel_size_mm, 1.0])
    return Atlas(csf=csf, gm=gm, wm=wm, affine=affine, voxel_size_mm=voxel_size_mm)


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: int = 6) -> np.ndarray:
    """A smooth random field in [-1, 1]: coarse Gaussian noise, upsampled cubically."""
    noise = rng.standard_normal((coarse,) * len(shape))
    field = ndimage.zoom(noise, [s / coarse for s in shape], order=3)[tuple(slice(0, s) for s in shape)]
    return (field / max(np.abs(field).max(), 1e-6)).astype(np.float32)


def deform(atlas: Atlas, amplitude_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Warp (csf, gm, wm) by one smooth random displacement field of peak ``amplitude_mm``."""
    shape = atlas.gm.shape
    amplitude = amplitude_mm / atlas.voxel_size_mm
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    coords = [g + amplitude * smooth_field(shape, rng) for g in grid]
    return tuple(ndimage.map_coordinates(m, coords, order=1, mode="constant") for m in (atlas.csf, atlas.gm, atlas.wm))


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def _distance(shape: tuple[int, ...], centre: np.ndarray) -> np.ndarray:
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(_grid(shape), centre)))


def pick_centre(brain: np.ndarray, wm: np.ndarray, depth_vox: float, rng: np.random.Generator, avoid=None) -> np.ndarray:
    """A random white-matter voxel at least ``depth_vox`` inside the brain (and outside ``avoid``)."""
    depth = ndimage.distance_transform_edt(brain)
    allowed = (wm > 0.5) & (depth > depth_vox) & (True if avoid is None else ~avoid)
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.5)
    return candidates[rng.integers(len(candidates))]


def push_aside(tissue: tuple[np.ndarray, ...], centre: np.ndarray, radius_vox: float, strength: float) -> tuple[np.ndarray, ...]:
    """Mass effect: move tissue radially away from ``centre``, by strength x radius at the centre,
    fading as exp(-(r / 2 radius)^2). Outside the tumour the displacement's slope stays below 1,
    so the tissue there does not fold; the tumour overwrites the core."""
    if strength == 0:
        return tissue
    grid = _grid(tissue[0].shape)
    offset = [g - c for g, c in zip(grid, centre)]
    r = np.maximum(np.sqrt(sum(o**2 for o in offset)), 1e-3)
    push = strength * radius_vox * np.exp(-((r / (2 * radius_vox)) ** 2))
    source = [g - push * o / r for g, o in zip(grid, offset)]
    return tuple(ndimage.map_coordinates(t, source, order=1, mode="constant") for t in tissue)


def tumour_labels(brain: np.ndarray, centre: np.ndarray, radius_vox: float, rng: np.random.Generator) -> np.ndarray:
    """BraTS labels (uint8: 0, 1 necrosis, 2 edema, 4 enhancing) of one lumpy tumour inside the brain."""
    lumpy = _distance(brain.shape, centre) / (1.0 + 0.25 * smooth_field(brain.shape, rng, coarse=10))
    labels = np.zeros(brain.shape, np.uint8)
    labels[lumpy < radius_vox] = 2
    labels[lumpy < 0.6 * radius_vox] = 4
    labels[lumpy < 0.4 * radius_vox] = 1
    labels[~brain] = 0
    return labels


def other_lesions(tissue: tuple[np.ndarray, ...], tumour: np.ndarray, voxel_mm: float, spec: "PhantomSpec", rng) -> tuple:
    """(tissue with any cavity filled by CSF, lesion labels uint8: 0, 1 focus, 2 cavity)."""
    csf, gm, wm = tissue
    brain = (csf + gm + wm) > 0.5
    labels = np.zeros(brain.shape, np.uint8)
    keep_clear = ndimage.binary_dilation(tumour > 0, iterations=3)
    if rng.random() < spec.cavity_p:
        radius = rng.uniform(5.0, 12.0) / voxel_mm
        centre = pick_centre(brain, wm, radius, rng, avoid=keep_clear)
        lumpy = _distance(brain.shape, centre) / (1.0 + 0.15 * smooth_field(brain.shape, rng, coarse=8))
        cavity = (lumpy < radius) & brain & ~keep_clear
        soft = ndimage.gaussian_filter(cavity.astype(np.float32), 0.7)
        csf, gm, wm = soft * (csf + gm + wm) + (1 - soft) * csf, (1 - soft) * gm, (1 - soft) * wm
        labels[cavity] = LESION_LABELS["cavity"]
    if rng.random() < spec.foci_p:
        for _ in range(rng.integers(1, 7)):
            radius = np.exp(rng.uniform(np.log(1.0), np.log(3.0))) / voxel_mm
            centre = pick_centre(brain, wm, 2 * radius, rng, avoid=keep_clear | (labels > 0))
            labels[(_distance(brain.shape, centre) < max(radius, 0.5)) & brain & (labels == 0)] = LESION_LABELS["focus"]
    return (csf, gm, wm), labels


def contrast(
    modality: str, tissue: tuple[np.ndarray, ...], labels: np.ndarray | None, lesions: np.ndarray | None, jitter: np.ndarray
) -> np.ndarray:
    """Noise-free intensity of one modality: tissue mix, with tumour labels and foci blended in softly."""
    image = sum(w * j * t for w, j, t in zip(TISSUE_CONTRAST[modality], jitter, tissue))
    blends = [(labels, label, value) for label, value in TUMOUR_CONTRAST[modality].items()] if labels is not None else []
    if lesions is not None:
        blends.append((lesions, LESION_LABELS["focus"], FOCUS_CONTRAST[modality]))
    for volume, label, value in blends:
        weight = ndimage.gaussian_filter((volume == label).astype(np.float32), 0.7)
        image = (1 - weight) * image + weight * value
    return image.astype(np.float32)


def acquire(image: np.ndarray, brain: np.ndarray, bias: np.ndarray, spec: PhantomSpec, rng) -> np.ndarray:
    """Apply the bias field and noise, and skull-strip: zero outside the brain."""
    noisy = image * np.exp(spec.bias_strength / 2 * bias) + spec.noise_std * rng.standard_normal(image.shape)
    return (np.clip(noisy, 0, None) * brain * SCANNER_SCALE).astype(np.float32)


def to_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a RAS-ordered array in LPS voxel order, as BraTS files are stored."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LPS")
    )
    lps = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(lps), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def make_subject(atlas: Atlas, spec: PhantomSpec, rng: np.random.Generator, with_tumour: bool) -> dict:
    """One subject: {modality: image}, 'brain' (uint8) and, with a tumour, 'seg' and 'lesions' (uint8)."""
    tissue = deform(atlas, spec.deformation_mm, rng)
    labels = lesions = None
    if with_tumour:
        brain = (tissue[0] + tissue[1] + tissue[2]) > 0.5
        radius = np.exp(rng.uniform(*np.log(spec.tumour_radius_mm))) / atlas.voxel_size_mm
        centre = pick_centre(brain, tissue[2], 0.6 * radius, rng)
        tissue = push_aside(tissue, centre, radius, spec.mass_effect)
        labels = tumour_labels((tissue[0] + tissue[1] + tissue[2]) > 0.5, centre, radius, rng)
        tissue, lesions = other_lesions(tissue, labels, atlas.voxel_size_mm, spec, rng)
    brain = ((tissue[0] + tissue[1] + tissue[2]) > 0.5).astype(np.float32)
    bias = smooth_field(brain.shape, rng, coarse=4)
    jitter = rng.uniform(0.95, 1.05, size=3)
    subject = {m: acquire(contrast(m, tissue, labels, lesions, jitter), brain, bias, spec, rng) for m in TISSUE_CONTRAST}
    subject["brain"] = brain.astype(np.uint8)
    if labels is not None:
        subject["seg"], subject["lesions"] = labels, lesions * brain.astype(np.uint8)
    return subject


def write_hcp_subject(root: Path, subject_id: str, subject: dict, affine: np.ndarray) -> None:
    save_volume(subject["t2"], affine, hcp_path(root, subject_id, "T2w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["t1"], affine, hcp_path(root, subject_id, "T1w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["brain"], affine, hcp_path(root, subject_id, "brainmask_fs.nii.gz"))


def write_brats_subject(root: Path, case_id: str, subject: dict, affine: np.ndarray) -> None:
    for name in ("t1", "t1ce", "t2", "flair", "seg", "lesions"):
        data = subject[name] if name in ("seg", "lesions") else np.round(subject[name]).astype(np.int16)
        lps, lps_affine = to_lps(data, affine)
        save_volume(lps, lps_affine, brats_path(root, case_id, name))


def _write_one(spec: PhantomSpec, seed: np.random.SeedSequence, number: int, with_tumour: bool, root: Path) -> tuple:
    atlas = load_atlas(spec.voxel_size_mm)  # cached: loaded once per worker process
    subject = make_subject(atlas, spec, np.random.default_rng(seed), with_tumour)
    if with_tumour:
        write_brats_subject(root, f"BraTS2021_{number:05d}", subject, atlas.affine)
    else:
        write_hcp_subject(root, f"{100000 + number * 7:06d}", subject, atlas.affine)
    return atlas.gm.shape


def generate_phantoms(hcp_root: Path, brats_root: Path, spec: PhantomSpec, workers: int = 1) -> dict:
    """Write ``spec.n_healthy`` HCP-layout and ``spec.n_tumour`` BraTS-layout subjects.

    Each subject has its own seed (spawned from ``spec.seed``), so the files are the same
    whatever the number of worker processes.
    """
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_healthy + spec.n_tumour)
    jobs = [(i, False, Path(hcp_root)) for i in range(spec.n_healthy)]
    jobs += [(i, True, Path(brats_root)) for i in range(spec.n_tumour)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_one, spec, seed, *job) for seed, job in zip(seeds, jobs)]
        shapes = [f.result() for f in tqdm(as_completed(futures), total=len(futures), desc="phantoms", unit="subject")]
    return {"healthy": spec.n_healthy, "tumour": spec.n_tumour, "shape": list(shapes[0])}
