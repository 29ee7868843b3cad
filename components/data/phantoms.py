"""Synthetic subjects built on the real MNI152 template, scanned at several sites and written in
the real HCP and BraTS layouts.

A subject is anatomy (and pathology), then an acquisition. Everything is seeded: a seed gives
the same files on any machine, with any number of worker processes.

Anatomy, on the atlas grid (``voxel_size_mm``):

1. Tissue maps: the ICBM152 grey- and white-matter probability maps and brain mask that ship
   with nilearn, resampled to ``voxel_size_mm``; CSF = brain mask - GM - WM; a smooth random
   deformation (coarse Gaussian noise upsampled, peak ``deformation_mm``) applied to every map.
2. Tumours (BraTS subjects): one, or with probability ``multifocal_p`` two to ``max_tumours``,
   of extent (edema included) drawn log-uniformly: the main one in ``tumour_radius_mm``
   (default 5-20 mm radius), the satellites in ``satellite_radius_mm`` (1.5-6 mm): lesions
   3-40 mm across. Each is irregular: a solid core made of one to three
   overlapping blobs under a smooth random distortion; inside the core, a necrotic centre cut by
   a random texture (so it is patchy, not a disc) within an enhancing rim; around it edema that
   infiltrates along white matter (a front spreading by repeated blurring, slowed where there is
   no white matter) and fades softly into normal tissue. Mass effect: the tissue around the
   main one is pushed aside (``mass_effect``). Labels as BraTS: 1 necrosis, 2 edema, 4 enhancing;
   edema is labelled where its weight passes 0.3, so the labelled border is barely brighter than
   the tissue it infiltrates, as in real scans.
3. Lesion appearance is set relative to the site's own tissue intensities, with a random
   quantile per kind and subject (one draw shared by all contrasts, so a bright-on-T2 edema is
   bright on FLAIR too) and a smooth texture: on T2 edema lies between grey matter and CSF,
   necrosis near CSF; on FLAIR edema is bright and necrosis dark; on T1 the lesion is darker
   than grey matter; on T1ce the rim enhances. Nothing about a lesion is tuned to one contrast.
4. Other lesions (BraTS subjects, labelled in ``<case>_lesions.nii.gz``, never in ``seg``, so a
   detector can be scored on lesion kinds it was never tuned for): with probability ``foci_p``,
   1-6 small bright foci in white matter (label 1, radius 1-3 mm, like white-matter
   hyperintensities); with probability ``cavity_p``, a resection cavity (label 2, radius
   5-12 mm) whose tissue is replaced by CSF.

Acquisition, per site (``SiteSpec``; ``sites`` in params.yaml):

5. Contrast: per-modality (CSF, GM, WM) intensities, jittered a few percent per subject.
6. Partial volume and resolution: an in-plane blur (``blur_mm`` FWHM); slices of
   ``slice_thickness_mm`` (a Gaussian slice profile, then resampled to that spacing) on an
   in-plane grid of ``in_plane_mm``; labels resampled by nearest neighbour.
7. A smooth multiplicative bias field (``bias_strength``), Gaussian noise (``noise_std``,
   relative to the contrast's brightest tissue) and the scanner's units (``intensity_scale``), inside the brain only
   (the images are skull-stripped, as HCP's ``*_brain`` and BraTS files are).

The training data are ``n_healthy`` + ``n_tumour`` subjects scanned at ``training_site``. Each
site of ``sites`` (the training site included) also scans the same held-out population of
``test_healthy`` + ``test_tumour`` subjects, as a travelling-heads study: between sites only the
acquisition differs, so a drop in a detector's numbers from one site to the next is the site's
doing, not the subjects'.
"""

from __future__ import annotations

import functools
import logging
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from components.data.layouts import brats_path, hcp_path
from components.data.nifti_io import save_volume

log = logging.getLogger(__name__)

MODALITIES = ("t1", "t1ce", "t2", "flair")
# Relative intensity of each tissue per contrast at the reference site (WM of T1 = 0.8 for scale).
TISSUE_CONTRAST = {  # modality: (csf, gm, wm)
    "t2": (1.00, 0.60, 0.40),
    "t1": (0.20, 0.55, 0.80),
    "t1ce": (0.20, 0.55, 0.80),
    "flair": (0.10, 0.65, 0.50),
}
TISSUES = ("csf", "gm", "wm")
# Each tumour kind's intensity: a factor of one of the site's tissue intensities, drawn in
# [low, high] (the same quantile for every contrast of a subject).
LESION_APPEARANCE = {  # modality: {kind: (tissue, low, high)}
    "t2": {"edema": ("gm", 1.15, 1.55), "enhancing": ("gm", 1.0, 1.3), "necrosis": ("csf", 0.75, 1.0)},
    "flair": {"edema": ("gm", 1.15, 1.5), "enhancing": ("gm", 1.0, 1.3), "necrosis": ("gm", 0.3, 0.8)},
    "t1": {"edema": ("gm", 0.8, 0.95), "enhancing": ("gm", 0.9, 1.05), "necrosis": ("gm", 0.4, 0.7)},
    "t1ce": {"edema": ("gm", 0.8, 0.95), "enhancing": ("wm", 1.1, 1.4), "necrosis": ("gm", 0.4, 0.7)},
}
TUMOUR_LABELS = {"necrosis": 1, "edema": 2, "enhancing": 4}  # BraTS
FOCUS_CONTRAST = {"t2": ("gm", 1.5), "t1": ("gm", 0.8), "t1ce": ("gm", 0.8), "flair": ("gm", 1.45)}  # small bright foci
LESION_LABELS = {"focus": 1, "cavity": 2}  # values of <case>_lesions.nii.gz
EDEMA_LABEL_WEIGHT = 0.3  # edema weight from which a voxel is labelled edema


@dataclass(frozen=True)
class SiteSpec:
    """How one site's scanner and protocol acquire a subject (``phantoms.sites.<name>``)."""

    tissue: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # modality: (csf, gm, wm), over TISSUE_CONTRAST
    bias_strength: float = 0.25  # peak-to-peak of the multiplicative bias field, log units
    noise_std: float = 0.02  # relative to the brightest tissue of each contrast
    in_plane_mm: float | None = None  # native in-plane voxel size; None: the atlas grid
    slice_thickness_mm: float | None = None  # None: the atlas grid
    blur_mm: float = 0.0  # in-plane partial-volume blur, FWHM
    intensity_scale: float = 1000.0  # scanner units of the written files

    def __post_init__(self) -> None:
        for modality, values in self.tissue.items():
            if modality not in TISSUE_CONTRAST:
                raise ValueError(f"sites: tissue contrast for {modality!r}; known modalities {sorted(TISSUE_CONTRAST)}")
            if len(values) != 3 or min(values) <= 0:
                raise ValueError(f"sites: tissue.{modality} is [csf, gm, wm], each > 0, got {list(values)}")
        for name in ("bias_strength", "noise_std", "blur_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"sites: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("in_plane_mm", "slice_thickness_mm"):
            if getattr(self, name) is not None and not 0.5 <= getattr(self, name) <= 10.0:
                raise ValueError(f"sites: {name} must lie in [0.5, 10] mm, got {getattr(self, name)}")
        if self.intensity_scale <= 0:
            raise ValueError(f"sites: intensity_scale must be > 0, got {self.intensity_scale}")

    def contrast(self, modality: str) -> dict[str, float]:
        return dict(zip(TISSUES, self.tissue.get(modality, TISSUE_CONTRAST[modality])))


def _default_sites() -> dict[str, SiteSpec]:
    return {"training": SiteSpec()}


@dataclass(frozen=True)
class PhantomSpec:
    """The phantom population and the sites that scan it (the ``phantoms`` section of params.yaml)."""

    seed: int = 2021
    n_healthy: int = 30
    n_tumour: int = 20
    voxel_size_mm: float = 2.0
    deformation_mm: float = 3.0
    tumour_radius_mm: tuple[float, float] = (5.0, 20.0)
    satellite_radius_mm: tuple[float, float] = (1.5, 6.0)
    multifocal_p: float = 0.3
    max_tumours: int = 3
    mass_effect: float = 0.4
    foci_p: float = 0.5
    cavity_p: float = 0.3
    training_site: str = "training"
    sites: dict[str, SiteSpec] = field(default_factory=_default_sites)
    test_healthy: int = 0  # held-out subjects scanned at every site
    test_tumour: int = 0

    def __post_init__(self) -> None:
        if min(self.n_healthy, self.n_tumour) < 1:  # the pipeline's splits need 3 of each: the data gate says so
            raise ValueError(f"phantoms.n_healthy and n_tumour must be >= 1, got {self.n_healthy} and {self.n_tumour}")
        if min(self.test_healthy, self.test_tumour) < 0:
            raise ValueError(f"phantoms.test_healthy and test_tumour must be >= 0, got {self.test_healthy} and {self.test_tumour}")
        if not 1.0 <= self.voxel_size_mm <= 4.0:
            raise ValueError(f"phantoms.voxel_size_mm must lie in [1, 4], got {self.voxel_size_mm}")
        if self.deformation_mm < 0:
            raise ValueError(f"phantoms.deformation_mm must be >= 0, got {self.deformation_mm}")
        for name in ("tumour_radius_mm", "satellite_radius_mm"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"phantoms.{name} must satisfy 0 < low <= high, got {[low, high]}")
        if not 0.0 <= self.mass_effect <= 1.0:
            raise ValueError(f"phantoms.mass_effect must lie in [0, 1] (a fraction of the radius), got {self.mass_effect}")
        for name in ("foci_p", "cavity_p", "multifocal_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"phantoms.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.max_tumours < 1:
            raise ValueError(f"phantoms.max_tumours must be >= 1, got {self.max_tumours}")
        if self.training_site not in self.sites:
            raise ValueError(f"phantoms.training_site {self.training_site!r} is not in phantoms.sites {sorted(self.sites)}")

    @property
    def training(self) -> SiteSpec:
        return self.sites[self.training_site]


@dataclass(frozen=True)
class Atlas:
    """Tissue fractions on a RAS grid: each (X, Y, Z) float32 in [0, 1]; affine in mm."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray
    voxel_size_mm: float


@dataclass
class Anatomy:
    """One subject before acquisition, on the atlas grid: tissue fractions (csf, gm, wm), and for
    a tumour subject the soft weight of each tumour kind, the BraTS labels, the other lesions and
    the appearance quantile of each kind."""

    tissue: tuple[np.ndarray, np.ndarray, np.ndarray]
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # kind: soft weight in [0, 1]
    seg: np.ndarray | None = None
    lesions: np.ndarray | None = None
    appearance: dict[str, float] = field(default_factory=dict)  # kind: quantile in [0, 1]
    texture: np.ndarray | None = None  # smooth multiplicative texture of the lesions

    @property
    def brain(self) -> np.ndarray:
        return (self.tissue[0] + self.tissue[1] + self.tissue[2]) > 0.5


class Scan(NamedTuple):
    """One subject as a site acquired it: {modality: image, 'brain', and 'seg', 'lesions' for a
    tumour subject}, all (X, Y, Z) RAS on the site's grid, and that grid's affine."""

    volumes: dict[str, np.ndarray]
    affine: np.ndarray


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
    # Cubic up to a quarter of the size, then linear: as smooth, at a tenth of the cost.
    quarter = [max(coarse, s // 4) for s in shape]
    field = ndimage.zoom(noise, [q / coarse for q in quarter], order=3)
    field = ndimage.zoom(field, [s / q for s, q in zip(shape, field.shape)], order=1)[tuple(slice(0, s) for s in shape)]
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


def irregular_core(shape: tuple[int, ...], centre: np.ndarray, radius_vox: float, rng: np.random.Generator) -> np.ndarray:
    """A solid core: one to three overlapping blobs near ``centre`` under a smooth random
    distortion; returns a 'normalised distance' that is < 1 inside the core (and at the centre)."""
    distortion = 1.0 + 0.3 * smooth_field(shape, rng, coarse=6)
    nearest = _distance(shape, centre)
    for _ in range(rng.integers(1, 4)):
        offset = rng.normal(0.0, 0.35 * radius_vox, size=3)
        nearest = np.minimum(nearest, _distance(shape, centre + offset) / rng.uniform(0.7, 1.1))
    return nearest / distortion / max(radius_vox, 0.5)


def infiltrate(core: np.ndarray, wm: np.ndarray, reach_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Edema's soft weight in [0, 1] around ``core``: it falls with the distance from the core,
    which counts up to three times slower through white matter than elsewhere (edema runs along
    the tracts and stops at the cortex), and under a random distortion; it fades to 0 at about
    ``reach_vox``, so its outer part is barely brighter than the tissue it infiltrates."""
    distance = ndimage.distance_transform_edt(~core)
    speed = (0.35 + 0.65 * ndimage.gaussian_filter(np.clip(wm, 0, 1), 1.0)) * (1.0 + 0.3 * smooth_field(core.shape, rng, coarse=5))
    return np.clip(1.0 - distance / speed / max(reach_vox, 0.5), 0.0, 1.0) ** 0.7


def box_around(shape: tuple[int, ...], centre: np.ndarray, half: float) -> tuple[slice, ...]:
    """The part of a volume within ``half`` voxels of ``centre`` (lesions are computed there only)."""
    return tuple(slice(max(0, int(c - half)), min(s, int(c + half) + 2)) for c, s in zip(centre, shape))


def one_tumour(tissue: tuple[np.ndarray, ...], centre: np.ndarray, radius_vox: float, rng) -> dict[str, np.ndarray]:
    """Soft weights (full-volume) of necrosis, enhancing rim and edema of one tumour of extent ``radius_vox``."""
    shape = tissue[0].shape
    box = box_around(shape, centre, 1.6 * radius_vox + 4)
    local = [t[box] for t in tissue]
    brain = (local[0] + local[1] + local[2]) > 0.5
    origin = np.array([s.start for s in box])
    core_radius = radius_vox * rng.uniform(0.4, 0.7)
    distance = irregular_core(brain.shape, centre - origin, core_radius, rng)
    core = (distance < 1.0) & brain
    texture = smooth_field(brain.shape, rng, coarse=5)
    necrotic = core & (distance < rng.uniform(0.4, 0.75)) & (texture > rng.uniform(-0.4, 0.2)) if core_radius > 1.5 else core & False
    soft = lambda mask: ndimage.gaussian_filter(mask.astype(np.float32), 0.6)  # noqa: E731 partial volume at the edges
    edema = infiltrate(core, local[2], 1.3 * (radius_vox - core_radius), rng) * brain  # labelled out to ~radius in WM
    weights = {"edema": np.maximum(edema, soft(core)), "enhancing": soft(core & ~necrotic), "necrosis": soft(necrotic)}
    full = {}
    for kind, weight in weights.items():
        full[kind] = np.zeros(shape, np.float32)
        full[kind][box] = weight
    return full


def tumours(anatomy: Anatomy, spec: PhantomSpec, voxel_mm: float, rng: np.random.Generator) -> Anatomy:
    """Place one tumour, or several with probability ``multifocal_p``; the main one pushes tissue aside."""
    count = rng.integers(2, spec.max_tumours + 1) if spec.max_tumours > 1 and rng.random() < spec.multifocal_p else 1
    ranges = [spec.tumour_radius_mm] + [spec.satellite_radius_mm] * (count - 1)
    radii = [np.exp(rng.uniform(*np.log(r))) / voxel_mm for r in ranges]
    tissue, weights, taken = anatomy.tissue, {}, np.zeros(anatomy.brain.shape, bool)
    for number, radius in enumerate(radii):
        brain = (tissue[0] + tissue[1] + tissue[2]) > 0.5
        centre = pick_centre(brain, tissue[2], 0.5 * radius, rng, avoid=taken)
        if number == 0:
            tissue = push_aside(tissue, centre, radius, spec.mass_effect)
        for kind, weight in one_tumour(tissue, centre, radius, rng).items():
            weights[kind] = np.maximum(weights.get(kind, 0.0), weight)
        taken |= weights["edema"] > 0.05
    brain = (tissue[0] + tissue[1] + tissue[2]) > 0.5
    seg = np.zeros(brain.shape, np.uint8)
    seg[weights["edema"] >= EDEMA_LABEL_WEIGHT] = TUMOUR_LABELS["edema"]
    seg[weights["enhancing"] >= 0.5] = TUMOUR_LABELS["enhancing"]
    seg[weights["necrosis"] >= 0.5] = TUMOUR_LABELS["necrosis"]
    seg[~brain] = 0
    appearance = {kind: float(rng.random()) for kind in TUMOUR_LABELS}
    texture = 1.0 + 0.08 * smooth_field(brain.shape, rng, coarse=16)
    return Anatomy(tissue, weights, seg, None, appearance, texture)


def other_lesions(anatomy: Anatomy, voxel_mm: float, spec: PhantomSpec, rng) -> Anatomy:
    """Any resection cavity (its tissue filled by CSF) and small foci, labelled in ``lesions``
    (uint8: 0, 1 focus, 2 cavity), kept clear of the tumour."""
    csf, gm, wm = anatomy.tissue
    brain = anatomy.brain
    labels = np.zeros(brain.shape, np.uint8)
    keep_clear = ndimage.binary_dilation(anatomy.weights["edema"] > 0.05, iterations=2)
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
    anatomy.tissue, anatomy.lesions = (csf, gm, wm), labels
    return anatomy


def make_anatomy(atlas: Atlas, spec: PhantomSpec, rng: np.random.Generator, with_tumour: bool) -> Anatomy:
    """One subject's anatomy (deformed atlas) and, for a tumour subject, its tumours and other lesions."""
    anatomy = Anatomy(deform(atlas, spec.deformation_mm, rng))
    if with_tumour:
        anatomy = other_lesions(tumours(anatomy, spec, atlas.voxel_size_mm, rng), atlas.voxel_size_mm, spec, rng)
    return anatomy


def contrast(modality: str, anatomy: Anatomy, site: SiteSpec, jitter: np.ndarray) -> np.ndarray:
    """Noise-free intensity of one modality: the tissue mix, with lesions blended in by their soft weights."""
    tissue_values = {name: value * j for (name, value), j in zip(site.contrast(modality).items(), jitter)}
    image = sum(tissue_values[name] * fraction for name, fraction in zip(TISSUES, anatomy.tissue))
    for kind in ("edema", "enhancing", "necrosis"):  # inner kinds drawn over outer ones
        if kind in anatomy.weights:
            tissue, low, high = LESION_APPEARANCE[modality][kind]
            value = tissue_values[tissue] * (low + anatomy.appearance[kind] * (high - low)) * anatomy.texture
            image = (1 - anatomy.weights[kind]) * image + anatomy.weights[kind] * value
    if anatomy.lesions is not None:
        tissue, factor = FOCUS_CONTRAST[modality]
        weight = ndimage.gaussian_filter((anatomy.lesions == LESION_LABELS["focus"]).astype(np.float32), 0.7)
        image = (1 - weight) * image + weight * tissue_values[tissue] * factor
    return image.astype(np.float32)


def site_grid(atlas: Atlas, site: SiteSpec) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(zoom factor per axis, Gaussian sigma in atlas voxels per axis) of a site's acquisition."""
    voxel = atlas.voxel_size_mm
    target = (site.in_plane_mm or voxel, site.in_plane_mm or voxel, site.slice_thickness_mm or voxel)
    fwhm = (site.blur_mm, site.blur_mm, np.sqrt(max(target[2] ** 2 - voxel**2, 0.0)))  # a slice's profile
    return tuple(voxel / t for t in target), tuple(f / 2.355 / voxel for f in fwhm)


def scan(anatomy: Anatomy, atlas: Atlas, site: SiteSpec, rng: np.random.Generator) -> Scan:
    """The site's acquisition of one subject: contrast, partial volume, its grid, bias and noise."""
    zoom, sigma = site_grid(atlas, site)
    resample = zoom != (1.0, 1.0, 1.0)

    def to_site(volume: np.ndarray, labels: bool = False) -> np.ndarray:
        if labels:
            return ndimage.zoom(volume, zoom, order=0) if resample else volume
        volume = ndimage.gaussian_filter(volume, sigma) if any(sigma) else volume
        return ndimage.zoom(volume, zoom, order=1) if resample else volume

    brain = to_site(anatomy.brain.astype(np.uint8), labels=True).astype(bool)
    bias = np.exp(site.bias_strength / 2 * smooth_field(brain.shape, rng, coarse=4))
    jitter = rng.uniform(0.95, 1.05, size=3)
    volumes = {}
    for modality in MODALITIES:
        image = to_site(contrast(modality, anatomy, site, jitter)) * bias
        noise_level = site.noise_std * max(site.contrast(modality).values())
        image = np.clip(image + noise_level * rng.standard_normal(image.shape), 0, None)
        volumes[modality] = (image * brain * site.intensity_scale).astype(np.float32)
    volumes["brain"] = brain.astype(np.uint8)
    if anatomy.seg is not None:
        volumes["seg"] = to_site(anatomy.seg, labels=True) * volumes["brain"]
        volumes["lesions"] = to_site(anatomy.lesions, labels=True) * volumes["brain"]
    old, new = np.array(atlas.gm.shape), np.array(brain.shape)
    scale = np.where(new > 1, (old - 1) / np.maximum(new - 1, 1), 1.0)  # ndimage.zoom aligns the corner voxels
    return Scan(volumes, atlas.affine @ np.diag([*scale, 1.0]))


def to_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a RAS-ordered array in LPS voxel order, as BraTS files are stored."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LPS")
    )
    lps = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(lps), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def make_subject(atlas: Atlas, spec: PhantomSpec, rng: np.random.Generator, with_tumour: bool, site: SiteSpec | None = None) -> Scan:
    """One subject (anatomy from ``rng``) as ``site`` (default: the training site) acquires it."""
    anatomy_seed, acquisition_seed = rng.spawn(2)
    anatomy = make_anatomy(atlas, spec, anatomy_seed, with_tumour)
    return scan(anatomy, atlas, site or spec.training, acquisition_seed)


def write_hcp_subject(root: Path, subject_id: str, subject: dict, affine: np.ndarray) -> None:
    save_volume(subject["t2"], affine, hcp_path(root, subject_id, "T2w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["t1"], affine, hcp_path(root, subject_id, "T1w_acpc_dc_restore_brain.nii.gz"))
    save_volume(subject["brain"], affine, hcp_path(root, subject_id, "brainmask_fs.nii.gz"))


def write_brats_subject(root: Path, case_id: str, subject: dict, affine: np.ndarray) -> None:
    for name in ("t1", "t1ce", "t2", "flair", "seg", "lesions"):
        data = subject[name] if name in ("seg", "lesions") else np.round(subject[name]).astype(np.int16)
        lps, lps_affine = to_lps(data, affine)
        save_volume(lps, lps_affine, brats_path(root, case_id, name))


class Job(NamedTuple):
    """One subject to write: its seeds, where, and as which site acquires it."""

    anatomy: np.random.SeedSequence
    acquisition: np.random.SeedSequence
    site: str
    subject_id: str
    with_tumour: bool
    root: Path


def _write_one(spec: PhantomSpec, job: Job) -> tuple:
    atlas = load_atlas(spec.voxel_size_mm)  # cached: loaded once per worker process
    anatomy = make_anatomy(atlas, spec, np.random.default_rng(job.anatomy), job.with_tumour)
    volumes, affine = scan(anatomy, atlas, spec.sites[job.site], np.random.default_rng(job.acquisition))
    writer = write_brats_subject if job.with_tumour else write_hcp_subject
    writer(job.root, job.subject_id, volumes, affine)
    return job.site, volumes["brain"].shape, tuple(float(z) for z in nib.affines.voxel_sizes(affine))


def site_folders(sites_root: Path, site: str) -> tuple[Path, Path]:
    """(healthy, tumour) folders of a site's held-out subjects: <sites_root>/<site>/{healthy,tumour},
    in the HCP and BraTS layouts."""
    return Path(sites_root) / site / "healthy", Path(sites_root) / site / "tumour"


def _ids(number: int, with_tumour: bool, held_out: bool) -> str:
    if with_tumour:
        return f"BraTS2021_{number + (10000 if held_out else 0):05d}"
    return f"{(900000 if held_out else 100000) + number * 7:06d}"


def phantom_jobs(hcp_root: Path, brats_root: Path, spec: PhantomSpec, sites_root: Path | None = None) -> list[Job]:
    """The training subjects (training site), then each site's scans of the held-out subjects.

    Each subject's seeds are spawned from ``spec.seed`` (its anatomy) and, for held-out subjects,
    from the site's name too (its acquisition), so a site added later leaves the others' files
    unchanged, and the files never depend on the number of worker processes."""
    jobs = []
    cohorts = [(False, spec.n_healthy, Path(hcp_root)), (True, spec.n_tumour, Path(brats_root))]
    training_seeds = iter(np.random.SeedSequence(spec.seed).spawn(spec.n_healthy + spec.n_tumour))
    for with_tumour, count, root in cohorts:
        for number in range(count):
            anatomy, acquisition = next(training_seeds).spawn(2)
            jobs.append(Job(anatomy, acquisition, spec.training_site, _ids(number, with_tumour, False), with_tumour, root))
    if sites_root is None:
        return jobs
    held_out = np.random.SeedSequence([spec.seed, 1]).spawn(spec.test_healthy + spec.test_tumour)
    for site in spec.sites:
        folders = site_folders(sites_root, site)
        counts = [(False, spec.test_healthy, folders[0]), (True, spec.test_tumour, folders[1])]
        seeds = iter(held_out)
        for with_tumour, count, root in counts:
            for number in range(count):
                acquisition = np.random.SeedSequence([spec.seed, 2, zlib.crc32(site.encode()), int(with_tumour), number])
                jobs.append(Job(next(seeds), acquisition, site, _ids(number, with_tumour, True), with_tumour, root))
    return jobs


def generate_phantoms(hcp_root: Path, brats_root: Path, spec: PhantomSpec, workers: int = 1,
                      sites_root: Path | None = None) -> dict:
    """Write the ``spec.n_healthy`` HCP-layout and ``spec.n_tumour`` BraTS-layout training
    subjects, and with ``sites_root`` each site's scans of the held-out subjects."""
    jobs = phantom_jobs(hcp_root, brats_root, spec, sites_root)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_one, spec, job) for job in jobs]
        written = [f.result() for f in tqdm(as_completed(futures), total=len(futures), desc="phantoms", unit="subject")]
    grids = {site: {"shape": list(shape), "voxel_mm": [round(v, 3) for v in voxels]} for site, shape, voxels in written}
    summary = {"healthy": spec.n_healthy, "tumour": spec.n_tumour, "shape": grids[spec.training_site]["shape"]}
    if sites_root is not None:
        summary["sites"] = {site: {"healthy": spec.test_healthy, "tumour": spec.test_tumour, **grids[site]}
                            for site in spec.sites if site in grids}
    return summary
