"""The whole chain as a Prefect flow on a real (temporary) Prefect server, tracked in a real MLflow."""

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from conftest import SLICED, gate_record, make_project, write_tiny_params
from flows.compress import compress
from flows.record.report import run_summary
from flows.record.tracking import teacher_tags
from flows.stages import STAGES
from tasks.data import load_data
from tasks.model_files import ModelSource
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier


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
    # the student is derived from the dense teacher: the teacher is not pruned (test_sparsify)
    assert set(metrics["candidates"]) == {"teacher", "distilled", "final"}
    assert "fidelity" not in metrics  # no unlabeled pool (tests/test_unlabeled.py)
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
    assert children["distill"].data.metrics["student_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert parent.data.params["distill.temperature"] == "4.0"
    assert parent.data.params["data.source"] == params.data.source
    # the headline in the units and precision its text uses (metrics.json keeps the exact figures)
    assert parent.data.metrics["compression_ratio"] == round(metrics["compression_ratio"], 1)
    assert parent.data.metrics["accuracy_drop_pt"] == round(100 * metrics["accuracy_drop"], 2)
    assert "accuracy_drop" not in parent.data.metrics
    assert parent.data.metrics["final.accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.info.run_id == report["mlflow_run_id"]
    client = MlflowClient(params.tracking.uri)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model.tflite", "metrics.json", "predictions.npz", "quant_sensitivity.json",
            "params.yaml", "plots"} <= logged
    assert parent.data.metrics["gate.teacher_drop.upper"] == pytest.approx(metrics["paired"]["upper"])
    assert metrics["accuracy_drop_upper"] == metrics["paired"]["upper"]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/sparsity.png", "plots/tradeoff.png", "plots/quant_sensitivity.png"}
    assert metrics["quantization"] == {"mode": "int8", "layer_precisions": {"int8": 5}}
    for key in ("final.latency_p90_us_4t", "final.latency_p50_us_1t", "final.memory_bytes"):
        assert parent.data.metrics[key] == pytest.approx(metrics["final"][key.split(".")[1]])

    card = client.download_artifacts(parent.info.run_id, "model_card.md", str(dvc_project))
    card = Path(card).read_text()
    assert card == Artifact.get("model-card").data  # shown in the Prefect UI
    data = Dataset.load(dvc_project / "artifacts" / "splits.json")
    assert card.startswith("# Model card: `test-int8`\n\nA TFLite classifier (int8) of 10 "
                           "classes over inputs of shape 8×8×1 (float32)")
    assert f"- test: {len(data.test)} samples, `{data.test.digest}`" in card
    assert "| latency p50 / p90, 4 threads |" in card and "| runtime memory |" in card
    assert "- distill: enabled True, width 0.25, init teacher" in card
    assert "- vs the teacher: latency " in card and "interleaved rounds)" in card
    assert "- slowest ops of the final model, 1 thread: " in card
    assert "\nslowest ops of the final model, 1 thread: " in run_summary(report)
    assert "## Registry\n\nPromoted to `champion`, the first: first model within the accuracy " \
           "gate (certified: accuracy drop" in card
    assert report["certified"]
    version = client.get_model_version("test-int8", report["model_version"])
    assert version.tags == {  # what a reviewer filters on; the rest in gate.json beside the model
        "verdict": "promoted", "certified": "true",
        "accuracy_drop_pt": str(parent.data.metrics["accuracy_drop_pt"]),
        "accuracy_drop_upper_pt": str(round(100 * metrics["paired"]["upper"], 2)),
        "compression_ratio": str(parent.data.metrics["compression_ratio"]),
        "speedup": str(parent.data.metrics["speedup"])}
    headline = version.description.split("\n")[0]  # the versions table's Description: no markdown
    assert headline.startswith("promoted (certified): ") and "*" not in headline
    assert gate_record("test-int8", report["model_version"], params.tracking.uri)[
        "gate.teacher_drop.upper"] == metrics["paired"]["upper"]


def test_an_uncertified_promotion_says_so_in_the_summary_registry_card_and_report(
        prefect_server, dvc_project, tiny_params, caplog):
    """On 100 test samples no bound reaches 2 points: `estimate` promotes on the point estimate
    (plain post-training int8 keeps the teacher's answers), marked uncertified everywhere; the
    run said which rule it applies after load, before any training."""
    params = tiny_params("sparsify.enabled=false", "distill.enabled=false",
                         "gate.max_accuracy_drop=0.02", "gate.require=estimate")
    with caplog.at_level(logging.INFO, logger="tasks.gate"):
        report = compress(params, workdir=str(dvc_project))
    assert report["promoted"] and not report["certified"]
    assert "promoted to champion UNCERTIFIED (on the point estimate)" in run_summary(report)
    (said,) = [r for r in caplog.records if r.getMessage().startswith("gate: gate.require estimate")]
    assert "100 test samples certify a 2.00 pt drop" in said.getMessage()
    (parent,), children = runs_by_parent(params.tracking.uri)
    assert said.created * 1000 < children["quantize"].info.start_time  # before the stages after load
    client = MlflowClient(params.tracking.uri)
    version = client.get_model_version("test-int8", report["model_version"])
    assert (version.tags["verdict"], version.tags["certified"]) == ("promoted", "false")
    record = gate_record("test-int8", report["model_version"], params.tracking.uri)
    assert record["gate.require"] == "estimate" and float(record["gate.certifiable_drop"]) > 0.02
    assert "Promoted to `champion` **uncertified** (on the point estimate)" in version.description
    assert "promoted to `champion` UNCERTIFIED" in Artifact.get("compress-report").data


def test_a_model_slower_than_the_floor_is_not_promoted_and_the_gate_says_both_latencies(
        prefect_server, dvc_project, tiny_params):
    """gate.max_slowdown 0.01: the model must be 100 times faster than its teacher (same
    architecture, int8): refused, the interleaved measurement on the version and in the report."""
    params = tiny_params("sparsify.enabled=false", "distill.enabled=false",
                         "gate.max_slowdown=0.01")
    report = compress(params, workdir=str(dvc_project))
    assert not report["promoted"]
    version = MlflowClient(params.tracking.uri).get_model_version("test-int8",
                                                                  report["model_version"])
    record = gate_record("test-int8", report["model_version"], params.tracking.uri)
    reason = record["gate.decision"]
    assert version.tags["verdict"] == "not promoted" and reason in version.description
    assert reason.startswith("slower than the teacher beyond noise: latency ")
    assert "x, between " not in reason  # a speed said one way: `3.21x faster (between ...`
    assert "interleaved rounds): over gate.max_slowdown 0.01x" in reason
    assert record["gate.teacher_slowdown.lower"] > 0.01 * 1.05
    assert "- vs the teacher: latency " in Artifact.get("compress-report").data


def test_plain_post_training_quantization_when_sparsify_and_distill_are_off(prefect_server, dvc_project, tiny_params):
    """In mode mixed with room to spare: every conv and dense kernel INT4, its sensitivity shown."""
    params = tiny_params("sparsify.enabled=false", "distill.enabled=false", "quantize.mode=mixed",
                         "quantize.max_accuracy_drop=0.2")
    metrics = compress(params, workdir=str(dvc_project))["metrics"]
    assert set(metrics["candidates"]) == {"teacher", "final"}
    assert metrics["final"]["params"] == metrics["teacher"]["params"]
    assert metrics["final"]["sparsity"] < 0.2  # unpruned: only weights INT4 rounds to zero
    assert metrics["final"]["tflite_bytes"] < metrics["teacher"]["tflite_bytes"] / 6
    assert metrics["quantization"] == {"mode": "mixed", "layer_precisions": {"int4": 5}}
    sensitivity = json.loads((dvc_project / "metrics" / "quant_sensitivity.json").read_text())
    shown = Artifact.get("quant-sensitivity")
    assert shown is not None and len(json.loads(shown.data)) == len(sensitivity["layers"]) > 5


def test_a_failing_stage_fails_the_mlflow_run_with_the_error(prefect_server, dvc_project, tiny_params, monkeypatch):
    import tasks.quantize

    def broken_converter(*args, **kwargs):
        raise RuntimeError("converter exploded")

    # the stage's compute only: the pre-check, which converts too, passes
    monkeypatch.setattr(tasks.quantize, "quantize_student", broken_converter)
    params = tiny_params()
    with pytest.raises(RuntimeError, match="converter exploded"):
        compress(params, workdir=str(dvc_project))
    (parent,), children = runs_by_parent(params.tracking.uri)
    assert parent.info.status == "FAILED"
    assert "converter exploded" in parent.data.tags["error"]
    assert children["quantize"].info.status == "FAILED"
    assert "evaluate" not in children


@pytest.fixture(scope="module")
def two_runs(prefect_server, tmp_path_factory, digits_npz, digits) -> dict:
    """Two runs of one project with a tf_keras .h5 teacher (sparsify and distill off, for speed):
    the first on 500 digits makes the champion, the second on 500 other digits meets it."""
    import tf_keras as keras

    files = tmp_path_factory.mktemp("inputs")
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="softmax")])
    teacher.compile("adam", "sparse_categorical_crossentropy")
    teacher.fit(digits.train.read(), digits.train.labels, epochs=3, verbose=0)
    teacher.save(files / "teacher.h5")
    full = load_data(SLICED, seed=0)
    np.savez(files / "other.npz", x=full.train.read(slice(500, 1000)),
             y=full.train.labels[500:1000])

    root = tmp_path_factory.mktemp("project")
    settings = (f"model.source={files / 'teacher.h5'}", "sparsify.enabled=false",
                "distill.enabled=false")
    make_project(root, digits_npz, *settings)
    first = compress(write_tiny_params(root, digits_npz, *settings), workdir=str(root))
    champion = (root / "artifacts" / "model.tflite").read_bytes()
    params = write_tiny_params(root, files / "other.npz", *settings)
    second = compress(params, workdir=str(root))
    client = MlflowClient(params.tracking.uri)
    return {"runs": [client.get_run(r["mlflow_run_id"]) for r in (first, second)],
            "reports": (first, second), "champion": champion, "uri": params.tracking.uri,
            "data": Dataset.load(root / "artifacts" / "splits.json")}


def test_the_champion_is_measured_again_on_the_new_runs_test_split(two_runs):
    (first, second), data = two_runs["reports"], two_runs["data"]
    assert first["promoted"] and second["model_version"] == "2"
    predicted = TFLiteClassifier(two_runs["champion"]).predict(data.test.read()).argmax(axis=1)
    accuracy = float(np.mean(predicted == data.test.labels))
    assert accuracy != first["metrics"]["final"]["accuracy"]  # else the test could not tell them apart
    recorded = two_runs["runs"][1].data
    assert recorded.metrics["gate.champion.accuracy"] == accuracy
    assert recorded.metrics["gate.candidate.accuracy"] == second["metrics"]["final"]["accuracy"]
    assert recorded.tags["gate.champion.version"] == "1"
    record = gate_record("test-int8", "2", two_runs["uri"])
    assert record["gate.champion.accuracy"] == accuracy and record["gate.champion.version"] == "1"
    assert record["gate.champion.gzip_bytes"] == len(gzip.compress(two_runs["champion"], 9))
    assert record["gate.decision"] == second["gate"]


def datasets_by_context(run) -> dict:
    return {{tag.key: tag.value for tag in logged.tags}["mlflow.data.context"]: logged.dataset
            for logged in run.inputs.dataset_inputs}


def test_the_runs_log_their_splits_as_datasets_that_differ_with_the_data(two_runs, digits_npz):
    inputs = [datasets_by_context(run) for run in two_runs["runs"]]
    assert [set(by_context) for by_context in inputs] == [{"train", "validation", "test"}] * 2
    assert all(inputs[0][c].digest != inputs[1][c].digest for c in ("train", "validation", "test"))
    assert inputs[0]["test"].name == "digits500.npz" and inputs[1]["test"].name == "other.npz"
    assert str(digits_npz) in inputs[0]["train"].source


def test_a_teacher_file_is_recorded_with_its_format_and_keras_version(two_runs):
    tags = two_runs["runs"][0].data.tags
    assert tags["teacher.format"] == "h5" and tags["teacher.converted"] == "false"
    assert tags["teacher.keras_version"].startswith("2.")
    keras3 = teacher_tags(ModelSource(Path("m.keras"), "keras", "3.11.0", converted=True))
    assert keras3 == {"teacher.format": "keras", "teacher.keras_version": "3.11.0",
                      "teacher.converted": "true"}
