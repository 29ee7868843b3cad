"""The MLflow pyfunc flavour of a Brainomaly detector (an MLflow "model from code").

MLflow stores this file inside the logged model, together with the ``components`` package
(``code_paths``) and the detector bundle (``artifacts['bundle']``), so the model loads with
nothing installed but torch, nibabel, scipy and mlflow. It scores through the same code as
`evaluate` and the endpoint, and takes what that code needs, so there is no mask to guess::

    model = mlflow.pyfunc.load_model("models:/brainomaly-detector@champion")
    model.predict({"volume": data, "affine": affine})  # a scan -> DataFrame: slice, score
    model.predict({"images": images, "brain": brain})  # preprocessed slices + brain masks -> (N,) scores

``volume`` is an (X, Y, Z) skull-stripped scan with its (4, 4) ``affine``; it goes through the
model's own preprocessing recipe, as an upload to the endpoint does, and ``slice`` is each
model slice's index on the scan's axial axis. ``images`` (N, 1, S, S) float32 must come from
that recipe (the processed shards) with their ``brain`` (N, 1, S, S) bool masks, all of one
scan where the model scores relative to its scan (``calibration.score_reference``).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from components.models.bundle import DetectorBundle

        self.bundle, self.detector = DetectorBundle.load(context.artifacts["bundle"], device="auto")

    def predict(self, context, model_input, params=None):
        from components.models.inference import score_slices, score_volume, with_reference

        if not isinstance(model_input, dict) or not ({"volume", "affine"} <= set(model_input)
                                                     or {"images", "brain"} <= set(model_input)):
            raise ValueError("pass {'volume': (X, Y, Z) array, 'affine': (4, 4) array} or preprocessed "
                             "{'images': (N, 1, S, S) float32, 'brain': (N, 1, S, S) bool}; a brain mask cannot be "
                             "told from intensities")
        if "volume" in model_input:
            slices, scored = score_volume(self.detector, self.bundle.preprocess, np.asarray(model_input["volume"]),
                                          np.asarray(model_input["affine"], dtype=np.float64), self.bundle.calibration)
            return pd.DataFrame({"slice": slices.slice_numbers, "score": scored.scores})
        images = np.asarray(model_input["images"], dtype=np.float32)
        brain = np.asarray(model_input["brain"], dtype=bool)
        size = self.bundle.preprocess.size
        if images.shape[1:] != (1, size, size) or brain.shape != images.shape:
            raise ValueError(f"expected images and brain of shape (N, 1, {size}, {size}), got {images.shape} and {brain.shape}")
        scored = score_slices(self.detector, images, brain, precision=self.bundle.calibration.precision)
        return with_reference(scored, self.bundle.calibration.score_reference).scores


set_model(DetectorPyfunc())
