"""The one evaluator: predictions match Keras, metrics are measured, ratios add up."""

import gzip
import json

import numpy as np
import pytest

from flows.report import summary_table
from tasks.artifacts import Workspace, write_bytes
from tasks.config import EvaluateConfig
from tasks.evaluate import CandidateMetrics, evaluate_tflite, recorded_drop, run_evaluate, summarize
from tasks.models import write_model
from tasks.paired import paired_drop
from tasks.tflite import TFLiteClassifier
from tasks.quantize import convert_to_tflite


def test_fp32_predictions_match_keras(digits, trained_cnn):
    expected = trained_cnn.predict(digits.x_test, verbose=0)
    actual = TFLiteClassifier(convert_to_tflite(trained_cnn)).predict(digits.x_test)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_int8_predictions_are_dequantized_and_agree_with_keras(digits, trained_cnn):
    int8 = TFLiteClassifier(convert_to_tflite(trained_cnn, "int8", digits.x_train[:50]))
    outputs = int8.predict(digits.x_test)
    assert outputs.dtype == np.float32 and outputs.shape == (60, 10)
    assert outputs.sum(axis=1) == pytest.approx(np.ones(60), abs=0.05)  # softmax, dequantized
    keras_labels = trained_cnn.predict(digits.x_test, verbose=0).argmax(axis=1)
    assert (outputs.argmax(axis=1) == keras_labels).mean() > 0.9


def test_candidate_metrics_are_measured(digits, trained_cnn):
    model = convert_to_tflite(trained_cnn, "int8", digits.x_train[:50])
    metrics = evaluate_tflite(model, digits, EvaluateConfig(latency_runs=200, warmup_runs=5), 123)
    predicted = TFLiteClassifier(model).predict(digits.x_test).argmax(axis=1)
    assert metrics.accuracy == pytest.approx(np.mean(predicted == digits.y_test))
    assert metrics.tflite_bytes == len(model)
    assert metrics.gzip_bytes == len(gzip.compress(model, compresslevel=9))
    assert metrics.params == 123
    assert 0 < metrics.latency_p50_us < 100_000


def test_summary_ratios():
    teacher = CandidateMetrics(0.98, 1000, 0.0, 4000, 3600, 90.0, 0.1)
    final = CandidateMetrics(0.97, 100, 0.8, 400, 36, 3.0, 1.0)
    summary = summarize({"teacher": teacher, "final": final})
    assert summary["compression_ratio"] == pytest.approx(100.0)
    assert summary["speedup"] == pytest.approx(30.0)
    assert summary["accuracy_drop"] == pytest.approx(0.01)
    assert "sparsity" not in summary["teacher"] and summary["final"]["sparsity"] == 0.8
    assert set(summary["candidates"]) == {"teacher", "final"}


def test_the_stage_keeps_every_candidates_predictions_and_the_paired_drop_of_final_vs_teacher(
        digits, trained_cnn, tmp_path):
    """An untrained CNN as the teacher, a trained one as the final model: many samples differ."""
    import tf_keras as keras

    ws = Workspace(tmp_path)
    digits.save(ws.data)
    write_model(keras.models.clone_model(trained_cnn), ws.teacher)  # fresh weights
    write_model(trained_cnn, ws.student)
    final = convert_to_tflite(trained_cnn, "int8", digits.x_train[:50])
    write_bytes(ws.model, final)
    run_evaluate(EvaluateConfig(latency_runs=200, warmup_runs=1), sparsified=False,
                 distilled=False, quantize_mode="int8", confidence=0.9, ws=ws)
    predictions = np.load(ws.predictions)
    assert set(predictions.files) == {"teacher", "final"}
    np.testing.assert_array_equal(predictions["final"],
                                  TFLiteClassifier(final).predict(digits.x_test).argmax(axis=1))
    document = json.loads(ws.metrics.read_text())
    drop = paired_drop(predictions["teacher"] == digits.y_test,
                       predictions["final"] == digits.y_test, 0.9)
    assert recorded_drop(document) == drop and drop.worse + drop.better > 0
    assert document["paired"]["upper"] == document["accuracy_drop_upper"] == drop.upper
    assert document["accuracy_drop"] == pytest.approx(drop.drop)
    assert f"(drop <= {100 * drop.upper:.2f} pt at 90 %)" in summary_table(document)
