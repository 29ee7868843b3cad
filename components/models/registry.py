"""Maps the ``model.name`` of params.yaml to a detector class and builds it from its params."""

from __future__ import annotations

import inspect

from torch import nn

from components.models.spatial_vae import SpatialVAE

DETECTORS: dict[str, type[nn.Module]] = {
    "spatial_vae": SpatialVAE,
}


def build_detector(name: str, **hyperparams) -> nn.Module:
    """Instantiate detector ``name``; unknown names or hyper-parameters are a clear error."""
    if name not in DETECTORS:
        raise ValueError(f"model.name {name!r} is not a detector; choose one of {sorted(DETECTORS)}")
    cls = DETECTORS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(hyperparams) - accepted
    if unknown:
        raise ValueError(f"model {name!r} has no hyper-parameter(s) {sorted(unknown)}; it takes {sorted(accepted)}")
    return cls(**hyperparams)
