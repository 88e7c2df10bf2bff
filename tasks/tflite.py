"""Running .tflite models with the LiteRT interpreter: the evaluator and the registered model
use this one class, so a served model returns exactly what was measured. Also the one reader of a
.tflite's stored weights (`stored_weights`), for the evaluator, the quantize stage and `mixed`.

The registered model carries this file alone (as `tflite.py`, see flows/record/pyfunc_model.py):
import nothing here but numpy, ai_edge_litert and the standard library.
"""

from __future__ import annotations

import ctypes
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from ai_edge_litert.tools import flatbuffer_utils

BATCH = 256
# tflite TensorType code -> (the name shrinkflow reports, the stored values' dtype); INT4 packs
# two weights per byte (unpacked by `_values`).
STORED_TYPES = {0: ("float", np.float32), 1: ("float16", np.float16), 3: ("uint8", np.uint8),
                7: ("int16", np.int16), 9: ("int8", np.int8), 17: ("int4", np.uint8)}
INT4 = 17
XNNPACK_REFUSED = "TfLiteXNNPackDelegate"  # in LiteRT's error when XNNPACK cannot take a graph


class TFLiteClassifier:
    """Runs a .tflite model with the LiteRT interpreter, quantizing int8 inputs as needed.

    `predict` returns float outputs (dequantized for int8 models), the same for every caller.
    A model converted for a static batch size (a recurrent one: tasks/quantize.py) runs in
    batches of that size. Gotcha: TFLite's fused LSTM/RNN ops keep their state in variable
    tensors that carry over to the next invoke (each sample would start from the previous one's
    final state); every batch starts from zeros here, as Keras does.

    `kernels` says what runs the model: `XNNPACK` (LiteRT's default delegate), or LiteRT's
    `built-in` kernels where XNNPACK refuses the graph, as it does an int8 tensor whose scale is
    out of its range: a narrow ReLU layer that is zero on every calibration sample gets a scale
    of ~1e-8 (measured: ResNet50's student at width 0.0625, EfficientNetB0's SE bottleneck).
    """

    def __init__(self, model: bytes, num_threads: int = 1):
        self.model = model
        self.num_threads = num_threads
        self.kernels = "XNNPACK"
        probe = self._interpreter()
        self.input = probe.get_input_details()[0]
        self.output = probe.get_output_details()[0]
        self.static_batch = self.input["shape_signature"][0] != -1
        self.batch = int(self.input["shape"][0]) if self.static_batch else BATCH

    def _interpreter(self, batch: int | None = None) -> Interpreter:
        if self.kernels == "XNNPACK":
            try:
                return self._allocated(batch, OpResolverType.AUTO)
            except RuntimeError as exc:
                if XNNPACK_REFUSED not in str(exc):
                    raise
                self.kernels = "built-in"
        return self._allocated(batch, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    def _allocated(self, batch: int | None, resolver: OpResolverType) -> Interpreter:
        interpreter = Interpreter(model_content=self.model, num_threads=self.num_threads,
                                  experimental_op_resolver_type=resolver)
        shape = interpreter.get_input_details()[0]["shape"].copy()
        if batch is not None and batch != shape[0]:
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
        """Outputs for every sample, in batches of up to BATCH (or of the model's static size)."""
        outputs, interpreter = [], None
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            if self.static_batch and len(chunk) < self.batch:  # pad the last
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), 0)])
            if interpreter is None or len(chunk) != interpreter.get_input_details()[0]["shape"][0]:
                interpreter = self._interpreter(len(chunk))
            interpreter.set_tensor(self.input["index"], self._to_input(chunk))
            interpreter.reset_all_variables()  # a recurrent op's state: zeros, as in Keras
            interpreter.invoke()
            outputs.append(self._from_output(interpreter.get_tensor(self.output["index"])))
        return np.concatenate(outputs)[: len(x)]

    def latency_us(self, sample: np.ndarray, runs: int, warmup: int) -> Latency:
        """Median and 90th percentile wall time of one batch-1 invoke, in microseconds, over
        `runs` invokes after `warmup` untimed ones."""
        time_invokes = self.invoke_timer(sample)
        time_invokes(warmup)
        p50, p90 = np.percentile(time_invokes(runs), [50, 90]) / 1000.0
        return Latency(float(p50), float(p90))

    def invoke_timer(self, sample: np.ndarray) -> Callable[[int], np.ndarray]:
        """A function that times `n` batch-1 invokes on `sample` (ns each) on one interpreter
        kept between its calls: warm once, then time in rounds (tasks/speed.py)."""
        interpreter = self._interpreter(1)
        interpreter.set_tensor(self.input["index"], self._to_input(sample[None]))

        def time_invokes(n: int) -> np.ndarray:
            timings = np.empty(n)
            for i in range(n):
                start = time.perf_counter_ns()
                interpreter.invoke()
                timings[i] = time.perf_counter_ns() - start
            return timings

        return time_invokes

    def memory_bytes(self) -> float:
        """Heap bytes a batch-1 interpreter holds once it has allocated and run: the tensor
        arena, XNNPACK's packed weights and the runtime's own state (not the model file, which a
        device maps from flash). Measured as the change in glibc's `mallinfo2` in-use bytes (as
        TFLite's benchmark_model does), so it includes what the runtime allocates, not an estimate
        from tensor sizes; NaN where the C library is not glibc."""
        in_use = _heap_in_use()
        if in_use is None:
            return float("nan")
        interpreter = self._interpreter(1)
        shape = interpreter.get_input_details()[0]["shape"]
        interpreter.set_tensor(self.input["index"], np.zeros(shape, self.input["dtype"]))
        interpreter.invoke()
        return float(_heap_in_use() - in_use)


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p90_us: float


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_in_use() -> int | None:
    """Bytes malloc has handed out and not had back (all arenas, mmapped blocks included)."""
    mallinfo2 = getattr(ctypes.CDLL(None), "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


@dataclass(frozen=True)
class StoredWeight:
    """A constant weight tensor of rank >= 2 (conv and dense kernels; biases are rank 1) as a
    .tflite file stores it, with the op of the main graph that reads it."""

    op: int  # index of the op in the main graph's operators
    scope: str  # that op's scope as AI Edge Quantizer names it: its outputs' names, each ';'-ended
    tensor: int  # index of the stored tensor (a weight read by two ops appears twice)
    precision: str  # the stored type: int4, int8, float16, float, ...
    values: np.ndarray  # in the stored layout: Conv2D [out, h, w, in], fully connected [out, in]


def stored_weights(model: bytes) -> list[StoredWeight]:
    """Every op's constant weights of rank >= 2, read from the flatbuffer itself: what the deployed
    file holds (INT8 weights quantized with zero point 0, pruned zeros as exact zeros). A weight
    decoded by a DEQUANTIZE op (float16 mode) counts at its stored type for the op it feeds."""
    flatbuffer = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    graph = flatbuffer.subgraphs[0]
    dequantize = {code for code, op in enumerate(flatbuffer.operatorCodes)
                  if flatbuffer_utils.get_builtin_code_from_operator_code(op)
                  == flatbuffer_utils.BuiltinOperator.DEQUANTIZE}
    stored_as = {op.outputs[0]: op.inputs[0] for op in graph.operators if op.opcodeIndex in dequantize}
    found = []
    for index, op in enumerate(graph.operators):
        if op.opcodeIndex in dequantize:
            continue
        for tensor_index in (stored_as.get(i, i) for i in op.inputs if i >= 0):  # -1: omitted
            tensor = graph.tensors[tensor_index]
            data = flatbuffer.buffers[tensor.buffer].data
            if data is None or len(tensor.shape) < 2 or tensor.type not in STORED_TYPES:
                continue
            found.append(StoredWeight(index, _scope(op, graph.tensors), tensor_index,
                                      STORED_TYPES[tensor.type][0], _values(tensor, bytes(data))))
    return found


def layer_precisions(model: bytes) -> dict[str, str]:
    """Each op holding weights, by scope, and the type they are stored in."""
    return {weight.scope: weight.precision for weight in stored_weights(model)}


def precision_counts(model: bytes) -> dict[str, int]:
    """How many weight layers are stored at each precision, e.g. {"int4": 2, "int8": 3}."""
    return dict(Counter(layer_precisions(model).values()))


def _scope(op, tensors) -> str:
    """AI Edge Quantizer's op scope (its `get_op_scope`, whose regexes select ops): the names of
    the op's outputs, else of its inputs, each followed by ';'."""
    names = [tensors[i].name.decode() for i in op.outputs if i >= 0] or [
        tensors[i].name.decode() for i in op.inputs if i >= 0]
    return "".join(f"{name};" for name in names if name)


def _values(tensor, data: bytes) -> np.ndarray:
    """A tensor's stored values in its shape; INT4 nibbles unpacked (zero is zero in two's
    complement)."""
    values = np.frombuffer(data, dtype=STORED_TYPES[tensor.type][1])
    if tensor.type == INT4:
        values = np.stack([values & 0x0F, values >> 4], axis=-1).ravel()[: int(np.prod(tensor.shape))]
    return values.reshape(tensor.shape)
