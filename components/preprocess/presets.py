"""The papers' preprocessing recipes, by name (``preprocess.preset`` in params.yaml).

Each preset sets the PreprocessSpec fields its paper describes; fields it does not name keep
the spec's defaults, and any field set explicitly in params.yaml overrides the preset.
``histogram_reference`` says whose histogram the others are matched to: 'tumour' or 'healthy'
(the first training subject of that cohort), or a NIfTI path. Steps a paper did that are not
replayed here are listed in ``NOT_REPLAYED``; docs/preprocessing.md "Preprocessing" says so.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # Brainomaly's own default: fast, 64 px, [0, 1], on Nyul & Udupa's standard scale (learned from
    # the healthy training subjects): of the four intensity recipes it transferred best across
    # sites (benchmarks/intensity_recipes.py).
    "standard": {"histogram_reference": "standard"},
    # anovaegan-spatial-autoencoders.txt: skull-stripped, normalised into [0, 1], 20 consecutive
    # axial slices around the midline, 256 x 256.
    "anovaegan": {
        "size": 256, "normalisation": "percentile", "percentiles": (0.0, 100.0), "value_range": (0.0, 1.0),
        "min_brain_fraction": 0.0, "middle_mm": 20.0, "crop": "brain_box",
    },
    # dual-vae-latent-distance.txt: black slices removed (HCP) / middle 130 slices (BraTS),
    # cropped to 200 x 200 and down-sampled to 64 x 64.
    "dual_vae": {
        "size": 64, "normalisation": "percentile", "percentiles": (0.0, 100.0), "value_range": (0.0, 1.0),
        "min_brain_fraction": 0.0, "middle_mm": 130.0, "crop": "fixed", "crop_mm": 200.0,
    },
    # dual-vae-latent-distance-improved.txt: N4, each volume in [-1, 1], histogram matched to a
    # BraTS reference, cropped to 200 x 200 and down-sampled to 128 x 128.
    "dual_vae_improved": {
        "size": 128, "bias_correction": True, "normalisation": "percentile", "percentiles": (0.0, 100.0),
        "value_range": (-1.0, 1.0), "histogram_reference": "tumour",
        "min_brain_fraction": 0.0, "middle_mm": 130.0, "crop": "fixed", "crop_mm": 200.0,
    },
    # latent-constrained-adversarial-detector.txt: z-score normalisation (size not stated: 64).
    "latent_constrained": {"size": 64, "normalisation": "zscore", "crop": "brain_box"},
    # introvae-latent-search-patch-metric.txt: 1 mm cubic resampling, histogram matching, centre
    # crop 256 x 256, renormalised to [-1, 1].
    "introvae": {
        "size": 256, "spacing_mm": 1.0, "normalisation": "percentile", "percentiles": (0.0, 100.0),
        "value_range": (-1.0, 1.0), "histogram_reference": "healthy",
        "min_brain_fraction": 0.0, "crop": "fixed", "crop_mm": 256.0,
    },
}

NOT_REPLAYED = {
    "anovaegan": "co-registration to the SRI24 atlas (HCP and BraTS ship registered) and CurvatureFlow denoising",
    "dual_vae_improved": "ANTs' N4 is replaced by SimpleITK's implementation of the same algorithm",
    "introvae": "no skull stripping in the paper; the HCP/BraTS files used here are already skull-stripped",
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
