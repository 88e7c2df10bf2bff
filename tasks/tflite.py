"""Running .tflite models with the LiteRT interpreter: the evaluator and the registered model
use this one class, so a served model returns exactly what was measured.

The registered model carries this file alone (as `tflite.py`, see flows/pyfunc_model.py): import
nothing here but numpy, ai_edge_litert and the standard library.
"""

from __future__ import annotations

import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

BATCH = 256


class TFLiteClassifier:
    """Runs a .tflite model with the LiteRT interpreter, quantizing int8 inputs as needed.

    `predict` returns float outputs (dequantized for int8 models), the same for every caller.
    """

    def __init__(self, model: bytes, num_threads: int = 1):
        self.model = model
        self.num_threads = num_threads
        probe = self._interpreter()
        self.input = probe.get_input_details()[0]
        self.output = probe.get_output_details()[0]

    def _interpreter(self, batch: int | None = None) -> Interpreter:
        interpreter = Interpreter(model_content=self.model, num_threads=self.num_threads)
        if batch is not None:
            shape = interpreter.get_input_details()[0]["shape"].copy()
            shape[0] = batch
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], shape)
        interpreter.allocate_tensors()
        return interpreter

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] == np.float32 or scale == 0:
            return x.astype(self.input["dtype"])
        info = np.iinfo(self.input["dtype"])
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(self.input["dtype"])

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output["quantization"]
        if self.output["dtype"] == np.float32 or scale == 0:
            return y.astype(np.float32)
        return (y.astype(np.float32) - zero_point) * scale

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for every sample, in batches of up to BATCH."""
        outputs = []
        for start in range(0, len(x), BATCH):
            chunk = x[start : start + BATCH]
            interpreter = self._interpreter(len(chunk))
            interpreter.set_tensor(self.input["index"], self._to_input(chunk))
            interpreter.invoke()
            outputs.append(self._from_output(interpreter.get_tensor(self.output["index"])))
        return np.concatenate(outputs)

    def latency_p50_us(self, sample: np.ndarray, runs: int, warmup: int) -> float:
        """Median wall time of one batch-1 invoke, in microseconds, after `warmup` invokes."""
        interpreter = self._interpreter(1)
        interpreter.set_tensor(self.input["index"], self._to_input(sample[None]))
        for _ in range(warmup):
            interpreter.invoke()
        timings = np.empty(runs)
        for i in range(runs):
            start = time.perf_counter_ns()
            interpreter.invoke()
            timings[i] = time.perf_counter_ns() - start
        return float(np.median(timings) / 1000.0)

