"""TFLite conversion: full-integer INT8 calibrated on real samples, or plain FP32."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tf_keras as keras

from prefect import task

from tasks.artifacts import Workspace, write_bytes
from tasks.config import QuantizeConfig
from tasks.data import Dataset
from tasks.errors import InputError
from tasks.models import read_model


def calibration_samples(data: Dataset, cfg: QuantizeConfig, seed: int) -> np.ndarray:
    """A seeded draw of real training samples; never the test split, never random data."""
    available = len(data.x_train)
    if cfg.calibration_samples > available:
        raise InputError(
            f"quantize.calibration_samples is {cfg.calibration_samples} but the training split has "
            f"{available} samples; set it to at most {available}"
        )
    chosen = np.random.default_rng(seed).permutation(available)[: cfg.calibration_samples]
    return data.x_train[chosen]


def convert_to_tflite(model: keras.Model, calibration: np.ndarray | None = None) -> bytes:
    """FP32 .tflite, or with `calibration` full-integer INT8 with int8 input and output.

    Weights are quantized symmetrically (zero point 0), so pruned zeros stay exact zeros.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _one_at_a_time(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _one_at_a_time(samples: np.ndarray) -> Iterator[list[np.ndarray]]:
    for sample in samples:
        yield [sample[None].astype(np.float32)]


def quantize_model(student: keras.Model, data: Dataset, cfg: QuantizeConfig, seed: int) -> bytes:
    """The quantize stage's compute, shared with the search's trials: `student` as a .tflite."""
    calibration = calibration_samples(data, cfg, seed) if cfg.enabled else None
    return convert_to_tflite(student, calibration)


def run_quantize(seed: int, cfg: QuantizeConfig, ws: Workspace) -> dict[str, float]:
    """Stage: student -> model.tflite (INT8, or FP32 when disabled)."""
    model = quantize_model(read_model(ws.student), Dataset.load(ws.data), cfg, seed)
    write_bytes(ws.model, model)
    return {"tflite_bytes": len(model)}


quantize_task = task(run_quantize, name="quantize")
