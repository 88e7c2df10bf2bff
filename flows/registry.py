"""MLflow model registry: the INT8 model as a self-contained pyfunc model, and the `champion` alias
behind a gate that measures the champion again, on this run's data."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

import tasks.tflite
from tasks.artifacts import Workspace
from tasks.config import EvaluateConfig, GateConfig
from tasks.data import Dataset
from tasks.evaluate import measure_tflite
from tasks.gate import Decision, Interface, judge, not_comparable
from tasks.tflite import TFLiteClassifier

CHAMPION = "champion"
PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["ai-edge-litert==2.3.0", "numpy", f"mlflow=={mlflow.__version__}"]
NO_CHAMPION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model / alias
# Else MLflow copies the working directory's uv.lock and pyproject.toml (shrinkflow's, with
# TensorFlow) into the model, and `--env-manager uv` installs those instead of REQUIREMENTS.
NO_UV_PROJECT = {"MLFLOW_UV_AUTO_DETECT": "false"}


@dataclass(frozen=True)
class Champion:
    version: str
    tflite: bytes


def register_and_gate(cfg: GateConfig, evaluate: EvaluateConfig, ws: Workspace,
                      accuracy_drop: float, refusal: Decision | None = None) -> tuple[str, Decision]:
    """Register the run's model as a new version of `cfg.registered_model` in the active run, then
    move `champion` to it if it passes the gate; otherwise tag the version with why not. What the
    gate measured goes on the version (as tags) and the run (as metrics). A `refusal` decided
    before the gate (a search that found nothing within its budget) stands."""
    champion = _champion(cfg.registered_model)
    decision, measured = _gate(cfg, evaluate, ws, accuracy_drop, champion)
    decision = refusal or decision
    version = _register(cfg.registered_model, ws.model)
    tags = {"gate.decision": decision.reason}
    if champion:
        tags["gate.champion.version"] = champion.version
    mlflow.log_metrics(measured)
    mlflow.set_tags(tags)
    client = MlflowClient()
    for key, value in (measured | tags).items():
        client.set_model_version_tag(cfg.registered_model, version, key, str(value))
    if decision.promote:
        client.set_registered_model_alias(cfg.registered_model, CHAMPION, version)
    else:
        client.set_model_version_tag(cfg.registered_model, version, "gate.rejected", decision.reason)
    return version, decision


def _gate(cfg: GateConfig, evaluate: EvaluateConfig, ws: Workspace, accuracy_drop: float,
          champion: Champion | None) -> tuple[Decision, dict[str, float]]:
    """The decision, and what it rests on as `gate.candidate.*` / `gate.champion.*` metrics.

    The champion's own tags were measured on its run's data (perhaps other data, another teacher),
    so it is measured again here, beside the new model, in this process, with the evaluator's code
    on this run's test split. A champion for other inputs or classes is not measured at all.
    """
    model = ws.model.read_bytes()
    data = Dataset.load(ws.data)
    measured = {"candidate": measure_tflite(model, data, evaluate)[0]}
    refusal = (not_comparable(cfg, _interface(champion.tflite), _interface(model))
               if champion else None)
    if champion and not refusal:
        measured["champion"] = measure_tflite(champion.tflite, data, evaluate)[0]
    decision = refusal or judge(cfg, measured["candidate"], accuracy_drop, measured.get("champion"))
    return decision, {f"gate.{who}.{key}": value for who, values in measured.items()
                      for key, value in values.items()}


def _register(name: str, tflite: Path) -> str:
    """Log the model from code with the LiteRT runner beside it, registered as a new version."""
    with mock.patch.dict(os.environ, NO_UV_PROJECT):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL),
            artifacts={"tflite": str(tflite)},
            code_paths=[tasks.tflite.__file__],
            registered_model_name=name,
            pip_requirements=REQUIREMENTS,
        )
    return str(info.registered_model_version)


def _champion(name: str) -> Champion | None:
    """The version holding the `champion` alias, with its .tflite file; None if there is none."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException as exc:
        if exc.error_code in NO_CHAMPION:
            return None
        raise  # the registry is unreachable: not a reason to crown the new model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        artifact = Model.load(path).flavors["python_function"]["artifacts"]["tflite"]["path"]
        return Champion(str(version), (path / artifact).read_bytes())


def _interface(tflite: bytes) -> Interface:
    classifier = TFLiteClassifier(tflite)
    shape = classifier.input["shape"]
    return Interface(tuple(int(d) for d in shape[1:]), int(classifier.output["shape"][-1]))
