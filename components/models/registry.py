"""Maps the ``model.name`` of params.yaml to a detector class and builds it from its params."""

from __future__ import annotations

import inspect

from components.models.anovaegan import AnoVAEGAN
from components.models.autoencoders import DenseAE, DenseVAE, SpatialAE, SpatialVAE
from components.models.baselines import CoarseNoiseDAE, IntensityThreshold
from components.models.detector import Detector
from components.models.diffusion import ConditionedDDPM, PatchedDDPM
from components.models.dual_vae import CEDVAE, DualVAE, VAEWithContextRegulariser
from components.models.flow import RectifiedFlow
from components.models.introvae import IntroVAEPatchMetric
from components.models.latent_constrained import LatentConstrainedDetector

DETECTORS: dict[str, type[Detector]] = {
    "anovaegan": AnoVAEGAN,
    "ce_dvae": CEDVAE,
    "conditioned_ddpm": ConditionedDDPM,
    "dense_ae": DenseAE,
    "dense_vae": DenseVAE,
    "denoising_ae": CoarseNoiseDAE,
    "diffusion": PatchedDDPM,
    "dual_vae": DualVAE,
    "intensity": IntensityThreshold,
    "introvae": IntroVAEPatchMetric,
    "latent_constrained": LatentConstrainedDetector,
    "rectified_flow": RectifiedFlow,
    "spatial_ae": SpatialAE,
    "spatial_vae": SpatialVAE,
    "vae_ce": VAEWithContextRegulariser,
}


def accepted_hyperparams(name: str) -> set[str]:
    if name not in DETECTORS:
        raise ValueError(f"model.name {name!r} is not a detector; choose one of {sorted(DETECTORS)}")
    return set(inspect.signature(DETECTORS[name].__init__).parameters) - {"self"}


def data_hyperparams(name: str, image_size: int, output_range) -> dict:
    """What the data decide for a detector (slice size, intensity range), where it takes them."""
    implied = {"image_size": image_size, "output_range": output_range}
    return {k: v for k, v in implied.items() if k in accepted_hyperparams(name)}


# The residual sign of a lesion on each contrast: on T2 and FLAIR tumour, edema and white-matter
# lesions are brighter than the tissue they replace; on T1 a tumour is darker and on T1ce its
# rim brighter, so both signs stay.
LESION_RESIDUAL = {"t2": "brighter", "flair": "brighter", "t1": "absolute", "t1ce": "absolute"}


def contrast_residual(hyperparams: dict, modality: str) -> dict:
    """``hyperparams`` with a ``residual: auto`` made the one the scans' contrast calls for."""
    if hyperparams.get("residual") != "auto":
        return hyperparams
    return {**hyperparams, "residual": LESION_RESIDUAL.get(modality, "absolute")}


def build_detector(name: str, **hyperparams) -> Detector:
    """Instantiate detector ``name``; unknown names or hyper-parameters are a clear error."""
    accepted = accepted_hyperparams(name)
    unknown = set(hyperparams) - accepted
    if unknown:
        raise ValueError(f"model {name!r} has no hyper-parameter(s) {sorted(unknown)}; it takes {sorted(accepted)}")
    return DETECTORS[name](**hyperparams)
