"""Where a .tflite's time goes, op by op: why a model is slow (an int8 LSTM on an integer kernel,
a swish per convolution, the reshapes of squeeze-and-excitation blocks).

LiteRT's Python interpreter has no op profiler (the C++ `benchmark_model` has; it is not in the
wheel), so each op is timed by difference: the main graph cut after its first k ops (the outputs
of op k made the graph's outputs) runs in T(k), and op k costs T(k) - T(k - 1). The cuts run with
the default delegate as the whole model does (XNNPACK fuses and partitions each cut alike). Timed
one after another, a burst of load on a shared machine between two cuts made a cut 50 % slower
than the whole model: so the cuts are timed in interleaved rounds (as tasks/speed.py), the
differences taken within each round and their median kept; a difference within noise comes out
as 0. A loop (WHILE) counts with its body. Every cut's interpreter is held for the rounds: a model
whose cuts would hold more than MAX_HELD_BYTES is not profiled.

Cutting can change how XNNPACK runs an op: an op whose output a cut makes the graph's output is
no longer fused with the next. ResNet50's stem PAD alone ran in 12.7 us, the PAD and the stem
convolution it feeds in 8.8: an op whose cut is clearly faster than the cut before it in every
round is booked with the op before as one group (`PAD+CONV_2D #0-1`; `fused_groups`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
from ai_edge_litert.tools import flatbuffer_utils

from tasks.speed import ROUNDS
from tasks.tflite import TFLiteClassifier

SHOWN = 5  # the slowest ops metrics.json and the summary list
MAX_HELD_BYTES = 2**30  # the model's bytes times its ops


@dataclass(frozen=True)
class OpTime:
    """One op of the main graph (or ops XNNPACK runs fused: `op` their types joined by `+`,
    `last` the last one's place): its place in execution order, its type, and its time."""

    index: int
    op: str
    us: float
    share: float  # of the model's time (the sum of its ops')
    last: int | None = None

    def __str__(self) -> str:
        places = f"{self.index}-{self.last}" if self.last is not None else f"{self.index}"
        return f"{self.op} #{places} {self.us:.1f} us ({100 * self.share:.0f} %)"

    def as_dict(self) -> dict:
        return asdict(self)


def op_times(model: bytes, sample: np.ndarray, threads: int, runs: int) -> list[OpTime]:
    """Every op (or fused group) of `model`'s main graph with its batch-1 time on `sample` at
    `threads` threads, from `runs` invokes of each cut in ROUNDS interleaved rounds; [] for a
    model too large to hold every cut (MAX_HELD_BYTES)."""
    flatbuffer = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    operators = flatbuffer.subgraphs[0].operators
    if len(model) * len(operators) > MAX_HELD_BYTES:
        return []
    names = [flatbuffer_utils.opcode_to_name(flatbuffer, op.opcodeIndex) or "CUSTOM"
             for op in operators]
    timers = [TFLiteClassifier(_cut(flatbuffer, k), threads).invoke_timer(sample)
              for k in range(1, len(operators) + 1)]
    per_round = max(1, runs // ROUNDS)
    for time_invokes in timers:
        time_invokes(per_round)
    cumulative = np.array([[np.median(time_invokes(per_round)) for time_invokes in timers]
                           for _ in range(ROUNDS)]) / 1000.0  # rounds x cuts, us
    differences = np.diff(cumulative, axis=1, prepend=0.0)
    groups = fused_groups(differences)
    costs = [max(float(np.median(differences[:, group].sum(axis=1))), 0.0) for group in groups]
    total = sum(costs) or 1.0
    return [OpTime(group[0], "+".join(names[index] for index in group), cost, cost / total,
                   group[-1] if len(group) > 1 else None)
            for group, cost in zip(groups, costs)]


def fused_groups(differences: np.ndarray) -> list[list[int]]:
    """The ops (columns of `differences`: rounds x ops, each cut's time minus the cut before) in
    groups run as one: an op whose difference is negative in every round, by over a hundredth
    of the model's time (a share the summary would show), joins the group before it (cut there,
    that group ran unfused and slower). Ops next to nothing can come out a little negative in
    every round too (a tiny model's SOFTMAX, -0.01 us): they stay alone, at 0."""
    below = -0.01 * np.median(differences.sum(axis=1))
    groups: list[list[int]] = []
    for index in range(differences.shape[1]):
        if groups and (differences[:, index] < below).all():
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def slowest_ops(model: bytes, sample: np.ndarray, threads: int, runs: int,
                shown: int = SHOWN) -> list[OpTime]:
    """The `shown` ops of `model` that take the most time, slowest first."""
    return sorted(op_times(model, sample, threads, runs), key=lambda op: -op.us)[:shown]


def _cut(flatbuffer, ops: int) -> bytes:
    """The model with its main graph's first `ops` operators, the outputs of the last one that
    has any as the graph's (signatures dropped: they name the whole graph's outputs)."""
    cut = copy.deepcopy(flatbuffer)
    graph = cut.subgraphs[0]
    graph.operators = graph.operators[:ops]
    graph.outputs = next(outputs for op in reversed(graph.operators)
                         if (outputs := [index for index in op.outputs if index >= 0]))
    cut.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(cut))
