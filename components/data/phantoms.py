"""Synthetic subjects built on the real MNI152 template, written in real HCP and BraTS layouts.

Model of one subject (all steps seeded, so a seed gives the same files on any machine):

1. Tissue maps: the ICBM152 grey- and white-matter probability maps and brain mask that ship
   with nilearn, resampled to ``voxel_size_mm``; CSF = brain mask - GM - WM.
2. Anatomy varies by a smooth random deformation (coarse Gaussian noise upsampled, peak
   ``deformation_mm``) applied to every map.
3. Contrast: each modality is a mix of per-tissue intensities (T2: CSF bright, WM dark; T1 the
   reverse), jittered a few percent per subject.
4. Tumour (BraTS subjects): a lumpy sphere of edema (label 2) around an enhancing rim (4) around
   a necrotic core (1), with each label's typical brightness per contrast, blended with soft edges.
5. Acquisition: a smooth multiplicative bias field and Gaussian noise, inside the brain only
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
    tumour_radius_mm: tuple[float, float] = (10.0, 30.0)


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


def tumour_labels(
    tissue: tuple[np.ndarray, ...], radius_vox: float, rng: np.random.Generator
) -> np.ndarray:
    """BraTS labels (uint8: 0, 1 necrosis, 2 edema, 4 enhancing) of one lumpy tumour inside the brain."""
    csf, gm, wm = tissue
    brain = (csf + gm + wm) > 0.5
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere((wm > 0.5) & (depth > 0.6 * radius_vox))
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.5)
    centre = candidates[rng.integers(len(candidates))]
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in brain.shape], indexing="ij")
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    lumpy = distance / (1.0 + 0.25 * smooth_field(brain.shape, rng, coarse=10))
    labels = np.zeros(brain.shape, np.uint8)
    labels[lumpy < radius_vox] = 2
    labels[lumpy < 0.6 * radius_vox] = 4
    labels[lumpy < 0.4 * radius_vox] = 1
    labels[~brain] = 0
    return labels


def contrast(
    modality: str, tissue: tuple[np.ndarray, ...], labels: np.ndarray | None, jitter: np.ndarray
) -> np.ndarray:
    """Noise-free intensity of one modality: tissue mix, with the tumour blended in softly."""
    image = sum(w * j * t for w, j, t in zip(TISSUE_CONTRAST[modality], jitter, tissue))
    if labels is not None:
        for label, value in TUMOUR_CONTRAST[modality].items():
            weight = ndimage.gaussian_filter((labels == label).astype(np.float32), 0.7)
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
    """One subject: {modality: image}, 'brain' (uint8) and, with a tumour, 'seg' (uint8)."""
    tissue = deform(atlas, spec.deformation_mm, rng)
    brain = ((tissue[0] + tissue[1] + tissue[2]) > 0.5).astype(np.float32)
    labels = None
    if with_tumour:
        radius_mm = rng.uniform(*spec.tumour_radius_mm)
        labels = tumour_labels(tissue, radius_mm / atlas.voxel_size_mm, rng)
    bias = smooth_field(brain.shape, rng, coarse=4)
    jitter = rng.uniform(0.95, 1.05, size=3)
    subject = {m: acquire(contrast(m, tissue, labels, jitter), brain, bias, spec, rng) for m in TISSUE_CONTRAST}
    subject["brain"] = brain.astype(np.uint8)
    if labels is not None:
        subject["seg"] = labels
    return subject


def write_hcp_subject(root: Path, subject_id: str, subject: dict, affine: np.ndarray) -> None:
    save_volume(subject["t2"], affine, hcp_path(root, subject_id, "T2w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["t1"], affine, hcp_path(root, subject_id, "T1w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["brain"], affine, hcp_path(root, subject_id, "brainmask_fs.nii.gz"))


def write_brats_subject(root: Path, case_id: str, subject: dict, affine: np.ndarray) -> None:
    for name in ("t1", "t1ce", "t2", "flair", "seg"):
        data = subject[name] if name == "seg" else np.round(subject[name]).astype(np.int16)
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
