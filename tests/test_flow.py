"""The whole chain as a Prefect flow on a real (temporary) Prefect server, tracked in a real MLflow."""

import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from mlflow import MlflowClient

from flows.compress import compress
from flows.stages import STAGES


def runs_by_parent(uri: str) -> tuple[list, dict]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return parents, children


def test_compress_writes_model_metrics_and_one_mlflow_run_per_stage(prefect_server, dvc_project, tiny_params):
    params = tiny_params()
    report = compress(params, workdir=str(dvc_project))

    metrics = json.loads((dvc_project / "metrics" / "metrics.json").read_text())
    assert metrics == report["metrics"]
    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    assert set(metrics["candidates"]) == {"teacher", "sparsified", "distilled", "final"}
    assert metrics["final"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert metrics["compression_ratio"] == pytest.approx(
        metrics["teacher"]["gzip_bytes"] / metrics["final"]["gzip_bytes"]
    )
    assert 0 <= metrics["final"]["accuracy"] <= 1
    model = Interpreter(model_path=str(dvc_project / "artifacts" / "model.tflite"))
    assert model.get_input_details()[0]["dtype"] == np.int8

    (parent,), children = runs_by_parent(params.tracking.uri)
    assert parent.info.status == "FINISHED"
    assert set(children) == set(STAGES)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert children["sparsify"].data.metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert parent.data.params["distill.temperature"] == "4.0"
    assert parent.data.params["data.source"] == params.data.source
    assert parent.data.metrics["compression_ratio"] == pytest.approx(metrics["compression_ratio"])
    assert parent.data.metrics["final.accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.info.run_id == report["mlflow_run_id"]
    client = MlflowClient(params.tracking.uri)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model.tflite", "metrics.json", "params.yaml", "plots"} <= logged
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/sparsity.png", "plots/tradeoff.png"}


def test_plain_post_training_quantization_when_sparsify_and_distill_are_off(prefect_server, dvc_project, tiny_params):
    params = tiny_params("sparsify.enabled=false", "distill.enabled=false")
    metrics = compress(params, workdir=str(dvc_project))["metrics"]
    assert set(metrics["candidates"]) == {"teacher", "final"}
    assert metrics["final"]["params"] == metrics["teacher"]["params"]
    assert metrics["final"]["sparsity"] < 0.05
    assert metrics["final"]["tflite_bytes"] < metrics["teacher"]["tflite_bytes"] / 3


def test_a_failing_stage_fails_the_mlflow_run_with_the_error(prefect_server, dvc_project, tiny_params, monkeypatch):
    import tasks.quantize

    def broken_converter(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(tasks.quantize, "convert_to_tflite", broken_converter)
    params = tiny_params()
    with pytest.raises(RuntimeError, match="converter exploded"):
        compress(params, workdir=str(dvc_project))
    (parent,), children = runs_by_parent(params.tracking.uri)
    assert parent.info.status == "FAILED"
    assert "converter exploded" in parent.data.tags["error"]
    assert children["quantize"].info.status == "FAILED"
    assert "evaluate" not in children
