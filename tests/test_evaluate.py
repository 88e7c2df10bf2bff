"""The one evaluator: predictions match Keras, metrics are measured, ratios add up."""

import gzip
import json
import logging
import os
from collections import Counter

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from flows.record.report import headline_line, slowest_line, summary_table
from tasks.artifacts import Workspace, write_bytes, write_json
from tasks.config import EvaluateConfig
from tasks.evaluate import (
    evaluate_tflite,
    model_answers,
    run_evaluate,
    warn_if_oversubscribed,
)
from tasks.measurements import CandidateMetrics, Comparison, RunMetrics
from tasks.models import write_model
from tasks.paired import paired_drop
from tasks.profile import SHOWN
from tasks.quantize import convert_to_tflite
from tasks.speed import ROUNDS, speed_change
from tasks.tflite import TFLiteClassifier


def test_fp32_predictions_match_keras(digits, trained_cnn):
    expected = trained_cnn.predict(digits.test.read(), verbose=0)
    actual = TFLiteClassifier(convert_to_tflite(trained_cnn)).predict(digits.test.read())
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_answers_of_a_split_or_pool_part_read_in_batches(digits, trained_cnn):
    from tasks.splits import Unlabeled

    classify = TFLiteClassifier(convert_to_tflite(trained_cnn)).predict
    expected = trained_cnn.predict(digits.train.read(), verbose=0).argmax(axis=1)
    part = Unlabeled(digits.train.source, digits.train.rows)
    task = digits.task
    assert (model_answers(task, classify, part) == expected).mean() > 0.98  # 300: two batches
    np.testing.assert_array_equal(model_answers(task, classify, digits.train),
                                  model_answers(task, classify, part))
    assert model_answers(task, classify, part.subset(slice(0))).shape == (0,)  # an empty part


def test_int8_predictions_are_dequantized_and_agree_with_keras(digits, trained_cnn):
    int8 = TFLiteClassifier(convert_to_tflite(trained_cnn, "int8", digits.train.read(slice(50))))
    outputs = int8.predict(digits.test.read())
    assert outputs.dtype == np.float32 and outputs.shape == (60, 10)
    assert outputs.sum(axis=1) == pytest.approx(np.ones(60), abs=0.05)  # softmax, dequantized
    keras_labels = trained_cnn.predict(digits.test.read(), verbose=0).argmax(axis=1)
    assert (outputs.argmax(axis=1) == keras_labels).mean() > 0.9


def test_candidate_metrics_are_measured(digits, trained_cnn):
    model = convert_to_tflite(trained_cnn, "int8", digits.train.read(slice(50)))
    cfg = EvaluateConfig(latency_runs=200, warmup_runs=5, threads=[2, 1])
    metrics = evaluate_tflite(model, digits, cfg, 123)
    predicted = TFLiteClassifier(model).predict(digits.test.read()).argmax(axis=1)
    assert metrics.accuracy == pytest.approx(np.mean(predicted == digits.test.labels))
    assert metrics.tflite_bytes == len(model)
    assert metrics.gzip_bytes == len(gzip.compress(model, compresslevel=9))
    assert metrics.params == 123
    assert 0 < metrics.latency_p50_us <= metrics.latency_p90_us < 100_000
    flat = metrics.as_dict()
    assert (flat["latency_p50_us"], flat["latency_p90_us"]) == (  # the first count's
        flat["latency_p50_us_2t"], flat["latency_p90_us_2t"])
    assert 0 < flat["latency_p50_us_1t"] <= flat["latency_p90_us_1t"]
    assert metrics.memory_bytes > 0


@pytest.mark.parametrize("mode, bytes_per_weight", [(None, 4), ("int8", 1)])
def test_runtime_memory_holds_the_weights_as_the_runtime_packs_them(mode, bytes_per_weight):
    """A 1.2 M-weight MLP: XNNPACK packs its weights into its own buffers, so the interpreter's
    heap holds them once more, at their stored precision, plus a small arena and the runtime."""
    import tf_keras as keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2048),
                              keras.layers.Dense(512), keras.layers.Dense(10)])
    calibration = np.random.default_rng(0).random((20, 64), np.float32)
    tflite = convert_to_tflite(model, *([mode, calibration] if mode else []))
    weights = bytes_per_weight * model.count_params()
    assert weights < TFLiteClassifier(tflite).memory_bytes() < weights + 2**20


def test_thread_counts_above_the_machines_cores_are_warned_about(caplog):
    cores = os.cpu_count()
    with caplog.at_level(logging.WARNING, logger="tasks.evaluate"):
        warn_if_oversubscribed(EvaluateConfig(threads=[1, cores]))
        assert not caplog.records
        warn_if_oversubscribed(EvaluateConfig(threads=[cores + 1, 1]))
    (warning,) = caplog.records
    assert f"evaluate.threads: {cores + 1} thread(s) on this {cores}-core machine" in \
        warning.getMessage()


def test_summary_ratios():
    teacher = CandidateMetrics(0.98, 1000, 0.0, 4000, 3600, 90.0, 99.0, 8000, 0.1, 1.0)
    final = CandidateMetrics(0.97, 100, 0.8, 400, 36, 3.0, 3.3, 800, 1.0, 1.0)
    ratios = Comparison.of(teacher, final)
    assert ratios.compression_ratio == pytest.approx(100.0)
    assert ratios.speedup == pytest.approx(30.0)
    assert ratios.accuracy_drop == pytest.approx(0.01)


def test_the_stage_keeps_every_candidates_predictions_and_the_paired_drop_of_final_vs_teacher(
        digits, trained_cnn, tmp_path):
    """An untrained CNN as the teacher, a trained one as the final model: many samples differ."""
    import tf_keras as keras

    ws = Workspace(tmp_path)
    digits.save(ws.data)
    write_model(keras.models.clone_model(trained_cnn), ws.teacher)  # fresh weights
    write_model(trained_cnn, ws.student)
    final = convert_to_tflite(trained_cnn, "int8", digits.train.read(slice(50)))
    write_bytes(ws.model, final)
    write_json(ws.quant_sensitivity, {"mode": "int8", "layers": []})  # the quantize stage's record
    run_evaluate(EvaluateConfig(latency_runs=200, warmup_runs=1), sparsified=False,
                 distilled=False, confidence=0.9, ws=ws)
    predictions = np.load(ws.predictions)
    assert set(predictions.files) == {"teacher", "final"}
    np.testing.assert_array_equal(predictions["final"],
                                  TFLiteClassifier(final).predict(digits.test.read()).argmax(axis=1))
    document = json.loads(ws.metrics.read_text())
    metrics = RunMetrics.from_json(document)
    assert metrics.to_json() == document  # the record reads back what it wrote
    drop = paired_drop(predictions["teacher"] == digits.test.labels,
                       predictions["final"] == digits.test.labels, 0.9)
    assert metrics.paired == drop and drop.worse + drop.better > 0
    assert document["paired"]["upper"] == document["accuracy_drop_upper"] == drop.upper
    assert document["accuracy_drop"] == pytest.approx(drop.drop)
    assert "sparsity" not in document["teacher"] and set(document["candidates"]) == {
        "teacher", "final"}
    table = summary_table(metrics)
    assert f"(drop <= {100 * drop.upper:.2f} pt at 90 %)" in table
    final_metrics = document["final"]
    for count, label in ((1, "1 thread"), (4, "4 threads")):  # evaluate.threads' default
        p50, p90 = (final_metrics[f"latency_p{q}_us_{count}t"] for q in (50, 90))
        assert f"latency p50 / p90, {label}" in table and f"{p50:.1f} / {p90:.1f} us" in table
    assert "runtime memory" in table
    slower = document["slowdown"]  # final vs teacher, interleaved, at the gate's confidence
    assert slower["lower"] <= slower["ratio"] <= slower["upper"] and slower["confidence"] == 0.9
    assert (slower["rounds"], slower["threads"]) == (ROUNDS, 1) and slower["model_us"] > 0
    ops = Counter(op["op_name"] for op in Interpreter(model_content=final)._get_ops_details())
    slowest = document["slowest_ops"]  # of the final model
    assert 0 < len(slowest) <= SHOWN and {
        name for op in slowest for name in op["op"].split("+")} <= set(ops)
    assert slowest == sorted(slowest, key=lambda op: -op["us"])
    assert "slowest ops of the final model, 1 thread: " in slowest_line(metrics.slowest_ops, 1)


def test_a_slower_model_is_said_in_words():
    """Three digits: two decimals below 10x, where the gate's noise and limits lie."""
    assert speed_change(90.0 / 3.0) == "30.0x faster"
    assert speed_change(281.0 / 728.0) == "2.59x SLOWER"
    assert speed_change(1.06) == "1.06x faster"
    assert headline_line(Comparison(compression_ratio=4.0, speedup=0.4, accuracy_drop=0.001),
                         promoted=False, certified=True) == (
        "not promoted: 4.0x smaller (gzip), 2.50x SLOWER, accuracy drop +0.10 pt")
