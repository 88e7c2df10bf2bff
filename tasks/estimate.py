"""A search candidate's size and latency before training it.

A candidate's .tflite and gzip bytes and its latency follow from its architecture, its sparsity
(how many zeros, in which layout) and its quantization mode, not from its trained weight values.
So the candidate is built as a trial builds it (`derive_student`, the same width and init), given
the zeros pruning would end with at once (`prune_at_once`: each layer's target from the same
allocation, or `2:4`, the same layers skipped), quantized on a few calibration samples and measured
by the evaluator (`measure_tflite`) — no training.

Gotcha: gzip packs trained weights a little differently from untrained ones (other value
distributions, other places for the zeros). Measured on the default digits CNN (widths 0.25/0.125,
sparsity 0.8/0.95): .tflite bytes exact; gzip within 1.5 % for int8, dynamic and mixed, up to
7 % too large for float16 (trained float16 weights pack better). tests/test_estimate.py bounds it.

About 2 s a candidate there, most of it the TFLite conversion (~60 %), then cloning models to
derive, check and prune the student (~35 %); timing 300 invokes is negligible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tf_keras as keras

from tasks.config import EvaluateConfig, Params
from tasks.evaluate import measure_tflite
from tasks.mixed import WEIGHT_BITS, Mixer, Plan
from tasks.models import seed_everything
from tasks.quantize import calibration_samples, convert_to_tflite, quantize_student
from tasks.sparsify import check_prunable, prune_at_once
from tasks.splits import Dataset
from tasks.students import derive_student

# Activation ranges change neither the size nor the speed of a model: a few samples do.
CALIBRATION_SAMPLES = 16


@dataclass(frozen=True)
class SizeEstimate:
    """What a candidate will measure as, before training (`mixed`: a lower bound, see
    `estimate_candidate`)."""

    params: int
    tflite_bytes: int
    gzip_bytes: int
    latency_p50_us: float


def estimate_candidate(teacher: keras.Model, data: Dataset, params: Params) -> SizeEstimate:
    """The size and latency `run_trial` would measure for `params` (a choice applied), without
    training: reads params.seed, distill, sparsify, quantize and evaluate. Like the trial it
    raises InputError for a mode LiteRT cannot run, only sooner.

    `mixed` chooses each layer's precision (INT4, INT8 or float) by the trained model's accuracy,
    so its size is unknown before training: the sizes are an optimistic lower bound, every op at
    the smallest weights AEQ allows it (INT4, else INT8; `Mixer`'s own recipes). A filter that
    skips a candidate which cannot beat the best size so far needs exactly that: a candidate is
    skipped only when even its lower bound cannot beat the incumbent, so none that could is lost.
    The bound is on the plan (its .tflite bytes); its gzip bytes carry the same few-% gap as every
    estimate (trained all-INT4 models measured up to 1.5 % smaller): leave that margin.
    Its latency is the every-op-INT8 plan's (mixed's starting plan): INT4 runs slower than INT8
    on x86 here, so the smallest plan is not the fastest; optimistic, not a strict bound.
    """
    seed_everything(params.seed)
    student = derive_student(teacher, params.distill.width, params.distill.init,
                             params.distill.activations, params.distill.blocks,
                             params.distill.downsample)
    if params.sparsify.enabled:
        student = prune_at_once(student, params.sparsify,
                                check_prunable(student, params.sparsify))
    few = min(CALIBRATION_SAMPLES, params.quantize.calibration_samples)
    quantize = params.quantize.model_copy(update={"calibration_samples": few})
    one = _one_sample(data.for_selection())
    if quantize.enabled and quantize.mode == "mixed":
        return _mixed_bound(student, calibration_samples(data, quantize, params.seed), one,
                            params.evaluate)
    tflite = quantize_student(student, data, quantize, params.seed).tflite
    return _estimate(student.count_params(), measure_tflite(tflite, one, params.evaluate)[0])


def _mixed_bound(student: keras.Model, calibration: np.ndarray, one: Dataset,
                 cfg: EvaluateConfig) -> SizeEstimate:
    """Sizes of the every-op-smallest plan, latency of the every-op-INT8 plan."""
    mixer = Mixer(convert_to_tflite(student), calibration)
    smallest: Plan = {op.scope: min(op.precisions, key=WEIGHT_BITS.get) for op in mixer.ops}
    int8: Plan = {op.scope: "int8" for op in mixer.ops}
    sized, _ = measure_tflite(mixer.quantize(smallest), one, cfg)
    timed, _ = measure_tflite(mixer.quantize(int8), one, cfg)
    return _estimate(student.count_params(), sized | {"latency_p50_us": timed["latency_p50_us"]})


def _estimate(params: int, measured: dict[str, float]) -> SizeEstimate:
    return SizeEstimate(params, int(measured["tflite_bytes"]), int(measured["gzip_bytes"]),
                        measured["latency_p50_us"])


def _one_sample(data: Dataset) -> Dataset:
    """`data` with a one-sample test split: the evaluator times its first sample, and accuracy
    means nothing before training."""
    return replace(data, test=data.test.subset(slice(1)))
