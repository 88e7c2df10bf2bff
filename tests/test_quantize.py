"""Conversion in every mode: I/O types, real calibration samples, pruned zeros kept, the model
runs in LiteRT, and mixed precision's plan, budget and sensitivity."""

import json
from dataclasses import replace

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from test_measurements import RECORD

from flows.record.report import summary_rows
from tasks.artifacts import Workspace
from tasks.config import DistillConfig, EvaluateConfig, QuantizeConfig, SparsifyConfig
from tasks.errors import InputError
from tasks.evaluate import measure_tflite, weight_sparsity
from tasks.measurements import CandidateMetrics
from tasks.mixed import quantizable_ops, validation_accuracy
from tasks.models import write_model
from tasks.paired import paired_drop
from tasks.quantize import (
    calibration_samples,
    check_quantizable,
    convert_to_tflite,
    quantize_model,
    run_quantize,
)
from tasks.sparsify import sparsify
from tasks.tflite import TFLiteClassifier, layer_precisions


def test_int8_model_takes_and_returns_int8(digits, trained_cnn):
    model = convert_to_tflite(trained_cnn, "int8", digits.train.read(slice(20)))
    interpreter = Interpreter(model_content=model)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    fp32 = Interpreter(model_content=convert_to_tflite(trained_cnn))
    assert fp32.get_input_details()[0]["dtype"] == np.float32
    assert len(model) < len(convert_to_tflite(trained_cnn)) / 2  # 4-byte weights became 1-byte


def test_pruned_zeros_stay_zeros(digits, trained_cnn):
    sparse = sparsify(trained_cnn, digits, SparsifyConfig(epochs=1, final_sparsity=0.8)).model
    assert weight_sparsity(convert_to_tflite(sparse, "int8", digits.train.read(slice(20)))) == pytest.approx(0.8, abs=0.01)
    assert weight_sparsity(convert_to_tflite(trained_cnn, "int8", digits.train.read(slice(20)))) < 0.05


def test_calibration_draws_real_training_samples_repeatably(digits):
    drawn = calibration_samples(digits, QuantizeConfig(calibration_samples=25), seed=3)
    assert drawn.shape == (25, *digits.input_shape)
    train_rows = {row.tobytes() for row in digits.train.read()}
    assert all(row.tobytes() in train_rows for row in drawn)
    again = calibration_samples(digits, QuantizeConfig(calibration_samples=25), seed=3)
    np.testing.assert_array_equal(drawn, again)


def test_more_calibration_samples_than_the_split_is_refused(digits):
    with pytest.raises(InputError, match="calibration_samples is 301 .* at most 300"):
        calibration_samples(digits, QuantizeConfig(calibration_samples=301), seed=0)


@pytest.fixture(scope="module")
def residual(digits):
    """A trained tiny residual CNN: Conv2D, DepthwiseConv2D, Add, Dense (shared by the module)."""
    import tf_keras as keras

    from tasks.config import ModelConfig
    from tasks.load import train_teacher

    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(x)
    return train_teacher(keras.Model(inputs, outputs), digits, ModelConfig(epochs=8))


def keras_accuracy(model, digits) -> float:
    return float(np.mean(model.predict(digits.test.read(), verbose=0).argmax(-1) == digits.test.labels))


IO_TYPES = {"int8": np.int8, "int16x8": np.int16, "dynamic": np.float32, "float16": np.float32}
WEIGHTS = {"int8": {"int8"}, "int16x8": {"int8"}, "dynamic": {"int8", "float"}, "float16": {"float16"}}


@pytest.mark.parametrize("mode", IO_TYPES)
def test_each_mode_runs_in_litert_with_its_io_types_and_keeps_accuracy(mode, residual, digits):
    quantized = quantize_model(residual, QuantizeConfig(mode=mode), digits.train.read(slice(50)))
    classifier = TFLiteClassifier(quantized.tflite)
    assert classifier.input["dtype"] == classifier.output["dtype"] == IO_TYPES[mode]
    measured, _ = measure_tflite(quantized.tflite, digits,
                                 EvaluateConfig(latency_runs=200, warmup_runs=1))
    assert measured["accuracy"] == pytest.approx(keras_accuracy(residual, digits), abs=0.05)
    precisions = layer_precisions(quantized.tflite)
    # conv, depthwise, dense, out: the ops that compute with the weights (named by their first
    # output, as in the float model), not the DEQUANTIZE ops that decode float16 weights for them
    float_ops = [op.scope for op in quantizable_ops(convert_to_tflite(residual)) if op.params]
    assert {scope.split(";")[0] for scope in precisions} == {scope.split(";")[0] for scope in float_ops}
    assert set(precisions.values()) <= WEIGHTS[mode] and "float" not in set(precisions.values()) - WEIGHTS[mode]


def test_mixed_chooses_within_the_budget_and_the_model_matches_its_plan(residual, digits):
    validation, task = digits.val, digits.task
    fp32 = validation_accuracy(convert_to_tflite(residual), validation, task)
    cfg = QuantizeConfig(mode="mixed", max_accuracy_drop=0.02)
    quantized = quantize_model(residual, cfg, digits.train.read(slice(50)), digits)
    layers = quantized.sensitivity["layers"]
    weighted = [layer for layer in layers if layer["params"]]
    assert [layer["layer"] for layer in weighted] == ["conv", "depthwise", "dense", "out"]
    assert {layer["op"] for layer in layers} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"}
    assert all(set(layer["validation_error"]) <= {"int4", "int8"} for layer in layers)
    stored = layer_precisions(quantized.tflite)
    assert {layer["scope"]: layer["precision"] for layer in weighted} == stored
    assert fp32 - validation_accuracy(quantized.tflite, validation, task) <= 0.02
    assert 1 - validation_accuracy(quantized.tflite, validation, task) == pytest.approx(
        quantized.sensitivity["validation_error"])
    assert TFLiteClassifier(quantized.tflite).predict(digits.test.read(slice(5))).shape == (5, 10)


def test_mixed_with_room_stores_int4_weights_and_shrinks_below_int8(residual, digits):
    loose = quantize_model(residual, QuantizeConfig(mode="mixed", max_accuracy_drop=0.2),
                           digits.train.read(slice(50)), digits)
    int8 = quantize_model(residual, QuantizeConfig(), digits.train.read(slice(50)))
    stored = {layer["layer"]: layer["precision"] for layer in loose.sensitivity["layers"]
              if layer["params"]}
    # AEQ's policy offers no INT4 for DEPTHWISE_CONV_2D: it stays INT8
    assert stored == {"conv": "int4", "depthwise": "int8", "dense": "int4", "out": "int4"}
    assert sorted(layer_precisions(loose.tflite).values()) == sorted(stored.values())
    assert len(loose.tflite) < len(int8.tflite)
    assert weight_sparsity(loose.tflite) < 0.2  # INT4 nibbles are unpacked, not read as bytes


def test_quantize_stage_writes_the_model_the_sensitivity_and_its_plot(residual, digits, tmp_path):
    ws = Workspace(tmp_path)
    digits.save(ws.data)
    write_model(residual, ws.student)
    run_quantize(0, QuantizeConfig(mode="mixed", calibration_samples=50), DistillConfig(), ws)
    sensitivity = json.loads(ws.quant_sensitivity.read_text())
    assert sensitivity["mode"] == "mixed"
    assert len(sensitivity["layers"]) == len(quantizable_ops(convert_to_tflite(residual)))
    assert (ws.plots / "quant_sensitivity.png").stat().st_size > 0
    assert TFLiteClassifier(ws.model.read_bytes()).predict(digits.test.read(slice(1))).shape == (1, 10)
    run_quantize(0, QuantizeConfig(mode="float16"), DistillConfig(), ws)
    assert json.loads(ws.quant_sensitivity.read_text()) == {"mode": "float16", "layers": []}


def test_a_model_without_recurrent_layers_gets_the_full_integer_conversion(trained_cnn, digits):
    """The weight-only forms are for recurrent models only (tasks/quantize.py `recurrent_int8`)."""
    calibration = digits.train.read(slice(20))
    quantized = quantize_model(trained_cnn, QuantizeConfig(), calibration)
    assert quantized.mode == "int8"
    assert quantized.tflite == convert_to_tflite(trained_cnn, "int8", calibration)


def test_a_graph_xnnpack_refuses_runs_on_the_built_in_kernels(digits):
    """A ReLU layer zero on every calibration sample gets an int8 scale of ~1e-8, out of
    XNNPACK's range (as a narrow student's dead layer): the model still runs, and the evaluator
    and the summary say on what."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    features = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    dead = keras.layers.Conv2D(4, 3, activation="relu",
                               bias_initializer=keras.initializers.Constant(-100.0))(features)
    head = keras.layers.Dense(10, activation="softmax")
    model = keras.Model(inputs, head(keras.layers.Flatten()(dead)))
    samples = digits.val.read(slice(16))
    check_quantizable(model, QuantizeConfig(mode="int8"), samples)  # not refused
    refused = convert_to_tflite(model, "int8", samples)
    classifier = TFLiteClassifier(refused)
    assert classifier.kernels == "built-in"
    assert classifier.predict(samples).shape == (16, 10)
    healthy = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(features)))
    assert TFLiteClassifier(convert_to_tflite(healthy, "int8", samples)).kernels == "XNNPACK"
    cfg = EvaluateConfig(threads=[1], latency_runs=200, warmup_runs=1)
    (teacher, teacher_classes), (final, final_classes) = (
        measure_tflite(tflite, digits, cfg) for tflite in (convert_to_tflite(healthy), refused))
    assert (teacher["xnnpack"], final["xnnpack"]) == (1.0, 0.0)
    labels = digits.test.labels
    metrics = replace(RECORD, candidates={"teacher": CandidateMetrics.of(1, teacher),
                                          "final": CandidateMetrics.of(1, final)},
                      paired=paired_drop(teacher_classes == labels, final_classes == labels, 0.95))
    assert summary_rows(metrics)[-1][:3] == ("runs on", "XNNPACK", "built-in kernels")
