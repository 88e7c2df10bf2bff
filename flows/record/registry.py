"""MLflow model registry: the INT8 model as a self-contained pyfunc model, and the `champion` alias
behind a gate that measures the champion again, on this run's data."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model

import tasks.tflite
from flows.record.gated import Gated, drop_metrics
from flows.record.report import headline_line
from flows.record.tracking import CHAMPION, VERSION_TAG, champion_version
from tasks.artifacts import Workspace
from tasks.config import EvaluateConfig, GateConfig
from tasks.evaluate import measure_tflite
from tasks.gate import Decision, Evidence, Interface, judge, not_comparable
from tasks.measurements import Comparison
from tasks.paired import paired_drop
from tasks.speed import slowdown
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier

PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["ai-edge-litert==2.3.0", "numpy", f"mlflow=={mlflow.__version__}"]
# Else MLflow copies the working directory's uv.lock and pyproject.toml (shrinkflow's, with
# TensorFlow) into the model, and `--env-manager uv` installs those instead of REQUIREMENTS.
NO_UV_PROJECT = {"MLFLOW_UV_AUTO_DETECT": "false"}
MODEL_CARD = "model_card.md"
GATE_RECORD = "gate.json"  # beside it: every figure the gate measured, its decision and evidence


@dataclass(frozen=True)
class Champion:
    version: str
    tflite: bytes


def register_and_gate(cfg: GateConfig, evaluate: EvaluateConfig, ws: Workspace,
                      evidence: Evidence, card: str, figures: Comparison,
                      refusal: Decision | None = None) -> Gated:
    """Register the run's model as a new version of `cfg.registered_model` in the active run, then
    move `champion` to it if it passes the gate; otherwise tag the version with why not. What the
    gate measured goes on the version (as tags) and the run (as metrics), with `gate.certified`
    (false: decided on the point estimate, gate.require) and the drop the test split can certify.
    `evidence` is the final model's drop vs the teacher (tasks/gate.py `weigh`). A `refusal`
    decided before the gate (a search that found nothing likely to pass) stands. The model `card`
    (flows/record/model_card.py), with the verdict appended, goes beside the .tflite in the
    registered model and the run, and is the version's description in the registry, after the
    headline (`figures`: the run's final model vs the teacher; the line is in `Gated` too).

    The version's tags are what a reviewer filters its versions on (`version_tags`); the rest the
    gate rests on is `gate.json` beside the .tflite (the run holds it as metrics and tags)."""
    champion = _champion(cfg.registered_model)
    decision, measured = _gate(cfg, evaluate, ws, evidence, champion)
    decision = refusal or decision
    card += verdict(decision, champion.version if champion else None, evidence.certified)
    headline = headline_line(figures, decision.promote, evidence.certified)
    tags = {"gate.decision": decision.reason, "gate.promoted": str(decision.promote).lower(),
            **evidence.tags()}
    if champion:
        tags["gate.champion.version"] = champion.version
    version = _register(cfg.registered_model, ws.model, card, tags | measured)
    mlflow.log_metrics(measured)
    mlflow.set_tags(tags | {VERSION_TAG: version})
    mlflow.log_text(card, MODEL_CARD)
    client = MlflowClient()
    client.update_model_version(cfg.registered_model, version, description=f"{headline}\n\n{card}")
    for key, value in version_tags(decision.promote, evidence, figures).items():
        client.set_model_version_tag(cfg.registered_model, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(cfg.registered_model, CHAMPION, version)
    return Gated(version, decision, measured, champion.version if champion else None, card,
                 evidence.certified, headline)


def version_tags(promoted: bool, evidence: Evidence, figures: Comparison) -> dict[str, str]:
    """The tags of a registered version, each a column a reviewer filters on: `verdict`
    (promoted / not promoted), `certified`, the accuracy drop and the upper bound the gate held to
    the budget, in points (`accuracy_drop_pt`, `accuracy_drop_upper_pt`), `compression_ratio` and
    `speedup`, as the headline says them (`Comparison.shown`)."""
    return {key: str(value) for key, value in {
        "verdict": "promoted" if promoted else "not promoted",
        "certified": str(evidence.certified).lower(),
        **figures.shown(),
        "accuracy_drop_upper_pt": round(100 * evidence.labels.upper, 2) + 0.0,
    }.items()}


def verdict(decision: Decision, champion: str | None, certified: bool) -> str:
    """The model card's last section: what the gate decided, on what evidence, and the champion it
    replaced."""
    if decision.promote:
        outcome = (f"Promoted to `{CHAMPION}`" + ("" if certified else
                                                  " **uncertified** (on the point estimate)")
                   + (f", replacing version {champion}" if champion else ", the first"))
    else:
        outcome = "Not promoted; " + (f"the champion stays version {champion}" if champion
                                      else "there is no champion yet")
    return f"\n## Registry\n\n{outcome}: {decision.reason}.\n"


def _gate(cfg: GateConfig, evaluate: EvaluateConfig, ws: Workspace, evidence: Evidence,
          champion: Champion | None) -> tuple[Decision, dict[str, float]]:
    """The decision, and what it rests on as metrics: `gate.candidate.*` / `gate.champion.*`, the
    paired drops `gate.teacher_drop*` (vs the teacher) and `gate.champion_drop*` (vs the
    champion: above 0, the candidate is the less accurate), the slowdowns
    `gate.teacher_slowdown.*` and `gate.champion_slowdown.*` (above 1, the candidate is slower).

    The champion's own tags were measured on its run's data (perhaps other data, another teacher),
    so it is measured again here, beside the new model, in this process, with the evaluator's code
    on this run's test split, sample by sample. A champion for other inputs or classes is not
    measured at all.
    """
    model = ws.model.read_bytes()
    data = Dataset.load(ws.data)
    candidate, predicted = measure_tflite(model, data, evaluate)
    measured = {"gate.candidate": candidate}
    drops = {"gate.teacher_drop": evidence.labels}
    refusal = (not_comparable(cfg, _interface(champion.tflite), _interface(model))
               if champion else None)
    slowdowns = {"gate.teacher_slowdown": evidence.slowdown}
    if champion and not refusal:
        measured["gate.champion"], champion_predicted = measure_tflite(champion.tflite, data,
                                                                       evaluate)
        drops["gate.champion_drop"] = paired_drop(
            data.task.right(champion_predicted, data.test.labels),
            data.task.right(predicted, data.test.labels), cfg.confidence)
        slowdowns["gate.champion_slowdown"] = slowdown(model, champion.tflite,
                                                       data.test.read(slice(1))[0], evaluate,
                                                       cfg.confidence)
    decision = refusal or judge(cfg, candidate, evidence, measured.get("gate.champion"),
                                drops.get("gate.champion_drop"),
                                slowdowns.get("gate.champion_slowdown"))
    measured |= {key: speed.as_dict() for key, speed in slowdowns.items()}
    metrics = {f"{who}.{key}": value for who, values in measured.items()
               for key, value in values.items()}
    for prefix, drop in drops.items():
        metrics |= drop_metrics(prefix, drop)
    if evidence.fidelity:
        metrics |= {f"gate.fidelity.{key}": value
                    for key, value in evidence.fidelity.as_dict().items() if key != "confidence"}
    return decision, metrics


def _register(name: str, tflite: Path, card: str, gate: dict[str, str | float]) -> str:
    """Log the model from code with the LiteRT runner, the model card and what the `gate` measured
    and decided (`GATE_RECORD`) beside it, registered as a new version."""
    with mock.patch.dict(os.environ, NO_UV_PROJECT), tempfile.TemporaryDirectory() as tmp:
        card_file, gate_file = Path(tmp) / MODEL_CARD, Path(tmp) / GATE_RECORD
        card_file.write_text(card)
        gate_file.write_text(json.dumps(gate, indent=1, sort_keys=True))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL),
            artifacts={"tflite": str(tflite), "model_card": str(card_file),
                       "gate": str(gate_file)},
            code_paths=[tasks.tflite.__file__],
            registered_model_name=name,
            pip_requirements=REQUIREMENTS,
        )
    return str(info.registered_model_version)


def _champion(name: str) -> Champion | None:
    """The version holding the `champion` alias, with its .tflite file; None if there is none."""
    version = champion_version(name)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        artifact = Model.load(path).flavors["python_function"]["artifacts"]["tflite"]["path"]
        return Champion(str(version), (path / artifact).read_bytes())


def _interface(tflite: bytes) -> Interface:
    classifier = TFLiteClassifier(tflite)
    shape = classifier.input["shape"]
    return Interface(tuple(int(d) for d in shape[1:]), int(classifier.output["shape"][-1]))
