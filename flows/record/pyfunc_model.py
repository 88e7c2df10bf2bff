"""The registered model's code, logged as a file (MLflow models from code), never pickled: loading
the model needs only its own requirements, not shrinkflow.

MLflow runs this file when the model is logged and again when it is loaded. The LiteRT runner is
tasks/tflite.py, logged beside this file as `code/tflite.py` (`code_paths`), so the served model
runs the evaluator's own code. Import nothing from shrinkflow (`flows`, `tasks`) here.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np


class TFLitePyfunc(mlflow.pyfunc.PythonModel):
    """A .tflite classifier as an MLflow pyfunc model. `predict` returns what the evaluator saw:
    float outputs (dequantized for INT8 models), one row per sample, via the same LiteRT runner."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from tflite import TFLiteClassifier  # code/tflite.py: on sys.path when loading, not logging

        self.classifier = TFLiteClassifier(Path(context.artifacts["tflite"]).read_bytes())

    def predict(self, context, model_input, params=None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        return self.classifier.predict(x.reshape(-1, *self.classifier.input["shape"][1:]))


mlflow.models.set_model(TFLitePyfunc())
