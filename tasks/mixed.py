"""Mixed precision with Google's AI Edge Quantizer (AEQ): per layer INT4 or INT8 weights (INT8
activations), or float, chosen by measured sensitivity within an accuracy budget.

Every op AEQ can quantize statically is a candidate, in any graph (Dense, Conv2D, DepthwiseConv2D,
residual adds, ...). AEQ quantizes a float .tflite by recipe: each entry matches an op by its
*scope* (its output tensor names, see `tfl_flatbuffer_utils.get_op_scope`); ops no entry matches
stay float. One calibration (tensor min/max on real samples) serves every recipe tried.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ai_edge_quantizer import qtyping, quantizer, recipe_manager
from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

from tasks.splits import Split
from tasks.task import Task
from tasks.tflite import TFLiteClassifier, stored_weights

WEIGHT_BITS = {"int4": 4, "int8": 8}  # the integer precisions tried per op; activations int8
FLOAT = "float"
Plan = dict[str, str]  # op scope -> "int4" | "int8" | "float"


@dataclass(frozen=True)
class QuantizableOp:
    """An op AEQ can quantize statically, with the precisions it accepts there."""

    scope: str
    op: str
    layer: str  # the Keras layer name, read from the scope for people
    params: int  # elements of its constant weights of rank >= 2 (0 for adds, pooling...)
    precisions: tuple[str, ...]


@dataclass(frozen=True)
class MixedModel:
    """The chosen model, its plan and the per-op sensitivity that chose it."""

    tflite: bytes
    plan: Plan
    sensitivity: dict


class Mixer:
    """Quantizes one float .tflite by plans, all from one calibration."""

    def __init__(self, float_tflite: bytes, calibration: np.ndarray):
        self.float_tflite = float_tflite
        self.ops = quantizable_ops(float_tflite)
        everything = self._quantizer({op.scope: "int8" for op in self.ops})
        self.qsvs = everything.calibrate(_calibration_data(float_tflite, calibration), num_threads=1)

    def quantize(self, plan: Plan) -> bytes:
        """The model with each op of `plan` at its precision; every other op stays float."""
        quantized = self._quantizer(plan).quantize(self.qsvs, enable_progress_report=False)
        return bytes(quantized.quantized_model)

    def _quantizer(self, plan: Plan) -> quantizer.Quantizer:
        ops = {op.scope: op for op in self.ops}
        q = quantizer.Quantizer(bytearray(self.float_tflite))
        for scope, precision in plan.items():
            if precision != FLOAT:
                q.add_static_config(_exactly(scope), qtyping.TFLOperationName(ops[scope].op),
                                    8, WEIGHT_BITS[precision])
        return q


def quantizable_ops(float_tflite: bytes) -> list[QuantizableOp]:
    """The ops of the main graph that AEQ quantizes statically, in graph order, each with the
    weight precisions its policy allows (INT4 is refused for some ops)."""
    model = fb.read_model(bytearray(float_tflite))
    graph = model.subgraphs[0]
    weights = Counter()
    for weight in stored_weights(float_tflite):
        weights[weight.op] += weight.values.size
    found = []
    for index, op in enumerate(graph.operators):
        name = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        params = weights[index]
        precisions = tuple(p for p in WEIGHT_BITS if name and _allowed(name, WEIGHT_BITS[p])
                           and (params or p == "int8"))  # weight bits mean nothing without weights
        if precisions:
            scope = fb.get_op_scope(op, graph.tensors)
            found.append(QuantizableOp(scope, name, _layer_name(scope), params, precisions))
    return found


def mixed_precision(float_tflite: bytes, calibration: np.ndarray, validation: Split, task: Task,
                    max_accuracy_drop: float) -> MixedModel:
    """Measure each op alone at each precision, then choose the plan:

    1. every op INT8; while the drop (validation accuracy of the FP32 model minus the plan's)
       exceeds `max_accuracy_drop`, the op whose INT8 hurt most alone goes back to float;
    2. INT4 weights, largest layers first, on every op whose INT4 alone stays within the budget,
       each kept only if the whole model still does.

    Every measurement runs the model in LiteRT with its default delegate (XNNPACK): a precision
    LiteRT cannot run for an op is not offered for it. Accuracy is the task's (tasks/task.py).
    """
    mixer = Mixer(float_tflite, calibration)
    reference = validation_accuracy(float_tflite, validation, task)

    def accuracy_of(plan: Plan) -> float:
        return validation_accuracy(mixer.quantize(plan), validation, task)

    alone = {op.scope: _alone(accuracy_of, op) for op in mixer.ops}

    def within(accuracy: float) -> bool:
        return reference - accuracy <= max_accuracy_drop

    plan = {op.scope: "int8" for op in mixer.ops if "int8" in alone[op.scope]}
    accuracy = accuracy_of(plan)
    for scope in sorted(plan, key=lambda s: alone[s]["int8"]):
        if within(accuracy):
            break
        plan[scope] = FLOAT
        accuracy = accuracy_of(plan)
    tolerant = [op for op in mixer.ops if plan.get(op.scope) == "int8"
                and "int4" in alone[op.scope] and within(alone[op.scope]["int4"])]
    for op in sorted(tolerant, key=lambda op: -op.params):
        trial = plan | {op.scope: "int4"}
        trial_accuracy = accuracy_of(trial)
        if within(trial_accuracy):
            plan, accuracy = trial, trial_accuracy
    layers = [
        {"layer": op.layer, "op": op.op, "scope": op.scope, "params": op.params,
         "bytes": 4 * op.params,
         "validation_error": {p: 1.0 - a for p, a in alone[op.scope].items()},
         "precision": plan.get(op.scope, FLOAT)}
        for op in mixer.ops
    ]
    sensitivity = {"fp32_validation_error": 1.0 - reference, "validation_error": 1.0 - accuracy,
                   "max_accuracy_drop": max_accuracy_drop, "layers": layers}
    return MixedModel(mixer.quantize(plan), plan, sensitivity)


def validation_accuracy(tflite: bytes, validation: Split, task: Task) -> float:
    """The task's accuracy of a .tflite model on `validation`, as the evaluator runs it."""
    answers = task.answers(validation.outputs(TFLiteClassifier(tflite).predict))
    return float(np.mean(task.right(answers, validation.labels)))


def _alone(accuracy_of: Callable[[Plan], float], op: QuantizableOp) -> dict[str, float]:
    """Validation accuracy with only `op` quantized, per precision LiteRT can run."""
    accuracies = {}
    for precision in op.precisions:
        try:
            accuracies[precision] = accuracy_of({op.scope: precision})
        except (RuntimeError, ValueError):  # LiteRT has no kernel for it
            continue
    return accuracies


def _allowed(op_name: str, weight_bits: int) -> bool:
    """Whether AEQ's policy accepts static INT8-activation quantization with these weight bits."""
    try:
        recipe_manager.RecipeManager().add_static_config(".*", qtyping.TFLOperationName(op_name),
                                                         8, weight_bits)
    except ValueError:
        return False
    return True


def _layer_name(scope: str) -> str:
    """`model/fc1/MatMul;model/fc1/Relu;` -> `fc1`: the path part after the model's name."""
    first = scope.split(";")[0].split("/")
    return first[1] if len(first) > 1 else first[0]


def _exactly(scope: str) -> str:
    return f"^{re.escape(scope)}$"


def _calibration_data(float_tflite: bytes, samples: np.ndarray) -> dict[str, list[dict]]:
    """AEQ's calibration input: per signature, one {input name: batch-1 sample} per sample."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=float_tflite).get_signature_list()
    key, signature = next(iter(signatures.items()))
    name = signature["inputs"][0]
    return {key: [{name: sample[None].astype(np.float32)} for sample in samples]}
