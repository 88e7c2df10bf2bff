"""MLflow model registry: the INT8 model as a pyfunc model, and the `champion` alias behind a gate."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.config import GateConfig
from tasks.gate import Decision, judge
from tasks.tflite import TFLiteClassifier

CHAMPION = "champion"
COMPARED = ("accuracy", "gzip_bytes", "latency_p50_us")
REQUIREMENTS = ["ai-edge-litert==2.3.0", "numpy", "mlflow"]


class TFLitePyfunc(mlflow.pyfunc.PythonModel):
    """A .tflite classifier as an MLflow pyfunc model. `predict` returns what the evaluator saw:
    float outputs (dequantized for INT8 models), one row per sample, via the same LiteRT runner."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = TFLiteClassifier(Path(context.artifacts["tflite"]).read_bytes())

    def predict(self, context, model_input, params=None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        return self.classifier.predict(x.reshape(-1, *self.classifier.input["shape"][1:]))


def register_and_gate(cfg: GateConfig, model: Path, metrics: dict) -> tuple[str, Decision]:
    """Register `model` as a new version of `cfg.registered_model` in the active run, then move
    `champion` to it if it passes the gate; otherwise tag the version with why not."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=TFLitePyfunc(),
        artifacts={"tflite": str(model)},
        registered_model_name=cfg.registered_model,
        pip_requirements=REQUIREMENTS,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    final = metrics["final"]
    for key in COMPARED:
        client.set_model_version_tag(cfg.registered_model, version, key, str(final[key]))
    decision = judge(cfg, final, metrics["accuracy_drop"], _champion(client, cfg.registered_model))
    client.set_model_version_tag(cfg.registered_model, version, "gate.decision", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(cfg.registered_model, CHAMPION, version)
    else:
        client.set_model_version_tag(cfg.registered_model, version, "gate.rejected", decision.reason)
    return version, decision


def _champion(client: MlflowClient, name: str) -> dict | None:
    try:
        tags = client.get_model_version_by_alias(name, CHAMPION).tags
    except MlflowException:  # no champion yet
        return None
    return {key: float(tags[key]) for key in COMPARED}
