"""Quantization-aware training and the 2:4 pattern: zeros kept through QAT into the .tflite, the
distillation loss during QAT, and the layers that are refused or left dense."""

import json
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from flows.stages import run_stage
from flows.workspace.params import load_params
from tasks.artifacts import Workspace
from tasks.config import DistillConfig, EvaluateConfig, QuantizeConfig, SparsifyConfig
from tasks.errors import InputError
from tasks.evaluate import blocks_2_4, evaluate_tflite, weight_sparsity, weight_tensors
from tasks.models import kernels, overall_sparsity, read_model, write_model
from tasks.qat import quantization_aware_training, quantize_aware
from tasks.quantize import convert_to_tflite
from tasks.sparsify import check_prunable, sparsify
from tasks.students import derive_student
from tasks.teaching import DistillationLoss, distill

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
TWO_FOUR = SparsifyConfig(pattern="2:4")
CONV_SKIPPED = "conv (Conv2D: input dimension 1 of (3, 3, 1, 8) is not a multiple of 4)"


def zeros_per_block(kernel: np.ndarray) -> np.ndarray:
    """Zeros in each block of 4 along the input dimension (axis -2 of a Keras kernel)."""
    along_inputs = np.moveaxis(kernel, -2, -1)  # TFLite's layout: the input dimension last
    return np.sum(along_inputs.reshape(-1, 4) == 0, axis=1)


def assert_zeros_kept(student: keras.Model, model: bytes) -> None:
    """Every zero of the student's kernels is a zero of the same kernel in the .tflite file; a
    weight that INT8 rounds to zero may add one, so the sparsities agree to 0.2 points."""
    stored = {w.shape: w for w in weight_tensors(model)}
    for name, kernel in kernels(student).items():
        in_tflite = stored[np.moveaxis(kernel, -1, 0).shape]  # TFLite: output channels first
        assert np.all(in_tflite[np.moveaxis(kernel, -1, 0) == 0] == 0), name
    assert weight_sparsity(model) == pytest.approx(overall_sparsity(student), abs=0.002)


def assert_2_4(model: keras.Model) -> None:
    """tiny_cnn's layout: the 1-channel conv left dense, the rest exactly 2 zeros in every 4."""
    found = kernels(model)
    assert np.all(found["conv/kernel"] != 0)  # not half-pruned by tfmot's padded blocks
    for name in ("dense/kernel", "out/kernel"):
        assert np.all(zeros_per_block(found[name]) == 2), name


def test_2_4_pattern_holds_from_the_stages_through_qat_into_the_int8_tflite(
    digits, trained_cnn, tmp_path
):
    ws = Workspace(tmp_path)
    digits.save(ws.data)
    write_model(trained_cnn, ws.teacher)
    params = load_params(PARAMS_YAML, [
        "sparsify.pattern=2:4", "sparsify.epochs=1", "distill.width=1.0", "quantize.qat_epochs=1",
        "quantize.calibration_samples=20",
    ])
    run_stage("sparsify", params, ws)
    assert_2_4(read_model(ws.sparse))
    report = json.loads(ws.sparsity.read_text())
    assert (report["pattern"], report["skipped"]) == ("2:4", [CONV_SKIPPED])

    student = derive_student(trained_cnn, width=0.5, init="teacher")
    student = distill(trained_cnn, student, digits, DistillConfig(epochs=1), params.sparsify)
    assert_2_4(student)
    assert blocks_2_4(convert_to_tflite(student, "int8", digits.train.read(slice(20)))) == 1.0  # post-training
    write_model(student, ws.student)
    run_stage("quantize", params, ws)  # QAT on
    model = ws.model.read_bytes()
    interpreter = Interpreter(model_content=model)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    metrics = evaluate_tflite(model, digits, EvaluateConfig(latency_runs=200, warmup_runs=1), 0)
    assert_zeros_kept(student, model)
    assert metrics.sparsity == weight_sparsity(model)
    assert metrics.blocks_2_4 == 1.0
    assert metrics.accuracy > 0.3  # chance is 0.1


def test_qat_keeps_unstructured_zeros_and_trains_on_the_distillation_loss(digits, trained_cnn):
    sparse = sparsify(trained_cnn, digits, SparsifyConfig(epochs=1, allocation="uniform")).model
    cfg = DistillConfig(temperature=3.0, alpha=0.2)
    qat = QuantizeConfig(qat_epochs=1)
    trained = quantization_aware_training(sparse, trained_cnn, digits, qat, cfg)
    assert isinstance(trained.loss, DistillationLoss)
    assert (trained.loss.temperature, trained.loss.alpha) == (3.0, 0.2)
    model = convert_to_tflite(trained, "int8", digits.train.read(slice(20)))
    assert_zeros_kept(sparse, model)
    assert overall_sparsity(sparse) == pytest.approx(0.8, abs=0.01)


def test_qat_follows_the_teachers_soft_targets(digits, trained_cnn):
    """A teacher that always says 3: at alpha 0 only its soft targets teach, and QAT obeys."""
    says_three = keras.Sequential([
        keras.Input(digits.input_shape), keras.layers.Flatten(),
        keras.layers.Dense(10, kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(np.eye(10)[3] * 10)),
    ])
    soft_only = DistillConfig(temperature=1.0, alpha=0.0)
    cfg = QuantizeConfig(qat_epochs=1, qat_learning_rate=0.01)
    trained = quantization_aware_training(trained_cnn, says_three, digits, cfg, soft_only)
    predicted = trained.predict(digits.val.read(), verbose=0).argmax(axis=1)
    assert np.mean(predicted == 3) > 0.9
    assert np.mean(trained_cnn.predict(digits.val.read(), verbose=0).argmax(axis=1) == 3) < 0.3


def test_a_layer_tfmot_cannot_quantize_is_named_with_the_fix(digits):
    model = keras.Sequential([keras.Input(digits.input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(8), keras.layers.PReLU(name="prelu"),
                              keras.layers.Dense(10)])
    with pytest.raises(InputError, match=r"cannot quantize layer prelu \(PReLU\).*qat_epochs: 0"):
        quantize_aware(model)


def test_qat_is_refused_for_conversions_other_than_int8():
    with pytest.raises(InputError, match=r"qat_epochs 1 trains for the full-integer INT8.*mode "
                                         r"float16; set quantize.qat_epochs: 0"):
        load_params(PARAMS_YAML, ["quantize.qat_epochs=1", "quantize.mode=float16"])
    with pytest.raises(InputError, match="quantize has enabled: false"):
        load_params(PARAMS_YAML, ["quantize.qat_epochs=2", "quantize.enabled=false"])


def test_2_4_leaves_a_layer_without_4_inputs_dense_or_refuses_it(tiny_cnn):
    assert check_prunable(tiny_cnn, TWO_FOUR) == [CONV_SKIPPED]
    refuse = SparsifyConfig(pattern="2:4", unsupported_layers="error")
    message = (r"conv \(Conv2D: input dimension 1 .* not a multiple of 4\) with sparsify.pattern "
               r"2:4; set sparsify.unsupported_layers: skip")
    with pytest.raises(InputError, match=message):
        check_prunable(tiny_cnn, refuse)
    assert check_prunable(tiny_cnn, SparsifyConfig()) == []  # unstructured prunes it
