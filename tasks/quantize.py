"""TFLite conversion in every quantization mode (see `QuantizeConfig.mode`), or plain FP32.

`quantize_model` is the one way to turn a Keras model into a quantized .tflite: the quantize stage
and the search's trials call it (`quantize_student`), and so do the bench's recipes
(flows/recipes.py). Every model it returns has run once in the LiteRT interpreter with its default
delegate (XNNPACK where it applies). An FP32 .tflite (the evaluator's and the search's teacher,
the bench's reference, `mixed`'s starting point) is `convert_to_tflite`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python.convert_phase import ConverterError  # not exported by tf.lite

from tasks.artifacts import Workspace, write_bytes, write_json
from tasks.config import DistillConfig, QuantizeConfig
from tasks.errors import InputError
from tasks.mixed import Mixer, mixed_precision
from tasks.models import read_model, seed_everything
from tasks.plots import plot_quant_sensitivity
from tasks.qat import quantization_aware_training
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier

Precision = Literal["fp32", "int8", "int16x8", "dynamic", "float16"]  # the converter's own modes
INT16X8 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8


@dataclass(frozen=True)
class QuantizedModel:
    """A .tflite in its mode; for `mixed` also the per-op sensitivity that chose its plan."""

    tflite: bytes
    mode: str
    sensitivity: dict | None = None


def calibration_samples(data: Dataset, cfg: QuantizeConfig, seed: int) -> np.ndarray:
    """A seeded draw of real training samples; never the test split, never random data."""
    available = len(data.train)
    if cfg.calibration_samples > available:
        raise InputError(
            f"quantize.calibration_samples is {cfg.calibration_samples} but the training split has "
            f"{available} samples; set it to at most {available}"
        )
    chosen = np.random.default_rng(seed).permutation(available)[: cfg.calibration_samples]
    return data.train.read(chosen)


def quantize_model(model: keras.Model, cfg: QuantizeConfig, calibration: np.ndarray,
                   data: Dataset | None = None) -> QuantizedModel:
    """`model` as a .tflite in `cfg.mode` (FP32 when not `cfg.enabled`), checked to run in LiteRT.

    `calibration` are real training samples (ignored by `dynamic` and `float16`); `mixed`
    measures its choices on `data`'s validation split (never the test split), by its task. A mode LiteRT cannot run for
    this model raises InputError naming the mode. A recurrent model's `int8` is
    `recurrent_int8`'s (its mode says which form it is).
    """
    if cfg.enabled and cfg.mode == "mixed":
        fp32 = convert_to_tflite(model)
        mixed = mixed_precision(fp32, calibration, data.val, data.task, cfg.max_accuracy_drop)
        quantized = QuantizedModel(mixed.tflite, "mixed", mixed.sensitivity)
    elif cfg.effective_mode == "int8" and is_recurrent(model):
        quantized = recurrent_int8(model)
    else:
        quantized = QuantizedModel(_convert(model, cfg.effective_mode, calibration),
                                   cfg.effective_mode)
    check_runs(quantized.tflite, quantized.mode, calibration[0])
    return quantized


def recurrent_int8(model: keras.Model) -> QuantizedModel:
    """What `int8` gives a model with a recurrent layer: the smaller of its `dynamic` and
    `float16` forms, both run by fast float kernels. Full integer is not offered: TFLite's int8
    LSTM op runs an integer kernel XNNPACK does not take (5.7x slower than the float op, 28 steps
    of 128 units), and calibrating a GRU's loop crashes the converter (segfault). `dynamic` (int8
    weights, TFLite's hybrid LSTM and fully-connected kernels) is the smaller and faster one when
    the converter quantizes the recurrent weights; it leaves tensors under 1,024 elements float
    (an LSTM(32) over 28 features kept all its weights float), and then `float16` is the smaller.
    Measured per form: docs/quantization.md, Recurrent layers."""
    forms = [QuantizedModel(_convert(model, mode, np.empty(0)), mode)
             for mode in ("dynamic", "float16")]
    return min(forms, key=lambda form: len(form.tflite))


def is_recurrent(model: keras.Model) -> bool:
    """Whether any layer of `model` (nested ones too, e.g. inside Bidirectional) is recurrent."""
    return any(isinstance(layer, keras.layers.RNN) for layer in model.submodules)


def _convert(model: keras.Model, mode: Precision, calibration: np.ndarray) -> bytes:
    try:
        return convert_to_tflite(model, mode, calibration)
    except ConverterError as exc:  # an op with no TFLite kernel in this mode
        raise _cannot_run(mode, exc) from None
    except RuntimeError as exc:  # "Quantization to 16x8-bit not yet supported for op: 'ELU'"
        if mode == "int16x8":
            raise _cannot_run(mode, exc) from None
        raise


def convert_to_tflite(model: keras.Model, mode: Precision = "fp32",
                      calibration: np.ndarray | None = None) -> bytes:
    """The TFLite converter in one of its modes: FP32; `int8` (full integer, int8 I/O); `int16x8`
    (int16 activations and I/O, int8 weights); `dynamic` (int8 weights, float activations and
    I/O); `float16` (float16 weights, float I/O). `int8` and `int16x8` calibrate on `calibration`.

    Weights are quantized symmetrically (zero point 0), so pruned zeros stay exact zeros. An
    integer input (token ids into an Embedding) stays as it is in every mode.
    """
    converter = _converter(model)
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in ("int8", "int16x8"):
        io_type = tf.int8 if mode == "int8" else tf.int16
        dtype = model.inputs[0].dtype.as_numpy_dtype
        converter.representative_dataset = lambda: ([sample[None].astype(dtype)]
                                                     for sample in calibration)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if mode == "int8" else INT16X8
        ]
        converter.inference_output_type = io_type
        if model.inputs[0].dtype.is_floating:
            converter.inference_input_type = io_type
    return converter.convert()


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """The converter for `model`. A recurrent layer becomes TFLite's fused sequence op (LSTM,
    RNN) or a plain loop (GRU) only with a static batch size (else: "'tf.TensorListReserve' op
    requires element_shape to be static"): such a model is converted for batch 1, and
    `TFLiteClassifier` runs it one sample at a time."""
    if not is_recurrent(model):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    signature = [tf.TensorSpec([1, *tensor.shape[1:]], tensor.dtype) for tensor in model.inputs]
    function = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0]))
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function(*signature)], model)


def check_runs(tflite: bytes, mode: str, sample: np.ndarray) -> None:
    """Invoke the model once on a real sample in LiteRT with its default delegate (XNNPACK)."""
    try:
        TFLiteClassifier(tflite).predict(sample[None])
    except (RuntimeError, ValueError) as exc:
        raise _cannot_run(mode, exc) from None


def _cannot_run(mode: str, exc: Exception) -> InputError:
    others = " or ".join(other for other in ("int8", "dynamic", "float16") if other != mode)
    return InputError(
        f"quantize.mode {mode}: LiteRT cannot run this model in that mode "
        f"({str(exc).strip().splitlines()[0]}); use quantize.mode {others}, "
        "or change the layer it names"
    )


def check_quantizable(model: keras.Model, cfg: QuantizeConfig, samples: np.ndarray) -> None:
    """The pre-check of `cfg.mode` (FP32 when quantization is off), on `model` as it is (untrained
    weights do) and two samples: it converts and runs once in LiteRT, so that a model no run
    could deploy (an op the converter has no kernel for in that mode, e.g. ELU in int16x8) is
    refused before any training; `mixed` also needs AEQ to read and calibrate it (ops it cannot
    quantize stay float, so they never stop it). Raises InputError naming the mode."""
    if not (cfg.enabled and cfg.mode == "mixed"):
        quantize_model(model, cfg, samples[:2])
        return
    try:
        Mixer(convert_to_tflite(model), samples[:2])
    except (RuntimeError, ValueError, ConverterError) as exc:
        raise _cannot_run("mixed", exc) from None


def quantize_student(student: keras.Model, data: Dataset, cfg: QuantizeConfig,
                     seed: int) -> QuantizedModel:
    """The quantize stage's compute, shared with the search's trials: `student` in `cfg.mode`,
    calibrated on a seeded draw of training samples; `mixed` chooses on the validation split."""
    calibration = (calibration_samples(data, cfg, seed) if cfg.needs_calibration
                   else data.train.read(slice(1)))
    return quantize_model(student, cfg, calibration, data)


def run_quantize(
    seed: int, cfg: QuantizeConfig, distill_cfg: DistillConfig, ws: Workspace
) -> dict[str, float]:
    """Stage: student -> model.tflite in `cfg.mode` (FP32 when disabled), after quantization-aware
    training against the teacher when `qat_epochs` is set; and the per-op sensitivity (json +
    plot; measured for `mixed`, an empty list of layers otherwise)."""
    student = read_model(ws.student)
    data = Dataset.load(ws.data)
    if cfg.qat_epochs:
        seed_everything(seed)
        teacher = read_model(ws.teacher)
        student = quantization_aware_training(student, teacher, data, cfg, distill_cfg)
    quantized = quantize_student(student, data, cfg, seed)
    sensitivity = {"mode": quantized.mode, "layers": []} | (quantized.sensitivity or {})
    write_bytes(ws.model, quantized.tflite)
    write_json(ws.quant_sensitivity, sensitivity)
    plot_quant_sensitivity(sensitivity, ws.plots / "quant_sensitivity.png")
    return {"tflite_bytes": len(quantized.tflite)}

