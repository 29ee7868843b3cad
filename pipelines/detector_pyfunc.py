"""The MLflow pyfunc flavour of a Brainomaly detector (an MLflow "model from code").

MLflow stores this file inside the logged model, together with the ``components`` package
(``code_paths``) and the detector bundle (``artifacts['bundle']``), so the model loads with
nothing installed but torch, nibabel, scipy and mlflow::

    model = mlflow.pyfunc.load_model("models:/brainomaly-detector@champion")
    scores = model.predict(slices)   # (N, 1, S, S) float32 preprocessed slices -> (N,) scores
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from components.models.bundle import DetectorBundle

        self.bundle, self.detector = DetectorBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from components.models.inference import score_slices

        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected preprocessed slices of shape (N, 1, S, S), got {images.shape}")
        return score_slices(self.detector, images, images > 0).scores


set_model(DetectorPyfunc())
