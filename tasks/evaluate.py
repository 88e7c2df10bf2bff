"""One evaluator for every candidate: accuracy, size, gzip size and latency of a .tflite model.

Measuring a .tflite file needs LiteRT only: TensorFlow (Keras models, conversion, plots) is imported
when the evaluate stage runs, so the gate of a run that skipped every stage stays quick to start.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np

from tasks.artifacts import Workspace, write_arrays
from tasks.config import EvaluateConfig
from tasks.fidelity import fidelity
from tasks.measurements import (
    CandidateMetrics,
    FidelityCounts,
    Quantization,
    RunMetrics,
    latency_keys,
)
from tasks.paired import paired_drop
from tasks.profile import slowest_ops
from tasks.speed import slowdown
from tasks.splits import Dataset, Rows
from tasks.task import Task
from tasks.tflite import TFLiteClassifier, precision_counts, stored_weights

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)


def weight_tensors(model: bytes) -> list[np.ndarray]:
    """The weight tensors of a .tflite file as stored (`stored_weights`), each once."""
    return list({weight.tensor: weight.values for weight in stored_weights(model)}.values())


def weight_sparsity(model: bytes) -> float:
    """Fraction of exact zeros in the weight tensors of a .tflite file."""
    weights = weight_tensors(model)
    total = sum(w.size for w in weights)
    return sum(int(np.sum(w == 0)) for w in weights) / total if total else 0.0


def blocks_2_4(model: bytes) -> float:
    """Share of the blocks of 4 consecutive weights along the input dimension (the last axis)
    that hold at least 2 zeros: 1.0 when every weight tensor whose input dimension is a multiple
    of 4 keeps the `2:4` pattern (the others cannot hold it and are not counted)."""
    blocks = [w.reshape(-1, 4) for w in weight_tensors(model) if w.shape[-1] % 4 == 0]
    if not blocks:
        return 0.0
    zeros = np.concatenate([np.sum(b == 0, axis=1) for b in blocks])
    return float(np.mean(zeros >= 2))


def model_answers(task: Task, predict: Callable[[np.ndarray], np.ndarray],
                  inputs: Rows) -> np.ndarray:
    """The answer (tasks/task.py: a class, a row of labels) `predict` (a batch of float32 inputs
    -> outputs: `TFLiteClassifier.predict`, or a Keras model's `predict`) gives each input of
    `inputs` (a split, or a part of the unlabeled pool: `data.pool.choose`,
    `data.pool.certify`), in order, read a batch at a time."""
    if not len(inputs):
        return np.zeros(0, np.int64)
    return task.answers(inputs.outputs(predict))


def evaluate_tflite(model: bytes, data: Dataset, cfg: EvaluateConfig, params: int) -> CandidateMetrics:
    """Measure one candidate on the test split, at every thread count of `cfg`; `params` comes
    from its Keras form."""
    metrics, _ = measure_tflite(model, data, cfg, cfg.threads)
    return CandidateMetrics.of(params, metrics)


def warn_if_oversubscribed(cfg: EvaluateConfig) -> None:
    """The pre-check's warning: thread counts above this machine's cores time threads waiting for
    each other, not a device with that many cores (measured on 2 cores: a mixed-precision student
    took 110 us per sample at 1 and 2 threads, 8 ms at 3 and 4)."""
    cores = os.cpu_count() or 1
    over = [count for count in cfg.threads if count > cores]
    if over:
        log.warning("evaluate.threads: %s thread(s) on this %d-core machine time the threads "
                    "contending for its cores, not a device with that many: read those latencies "
                    "with care, or measure on the device (or list at most %d)",
                    ", ".join(map(str, over)), cores, cores)


def measure_tflite(model: bytes, data: Dataset, cfg: EvaluateConfig,
                   thread_counts: Sequence[int] = ()) -> tuple[dict[str, float], np.ndarray]:
    """Everything the evaluator measures that needs only the .tflite file (the gate measures the
    registered champion this way): the task's scores on the test split (tasks/task.py),
    sparsity, sizes, runtime memory, batch-1 latency at `cfg.threads[0]` and, as
    `latency_p50_us_{n}t` / `latency_p90_us_{n}t`, at each of `thread_counts`; and the answer to
    every test sample, for paired comparisons on the same samples."""
    classifier = TFLiteClassifier(model, cfg.threads[0])
    predicted = model_answers(data.task, classifier.predict, data.test)
    sample = data.test.read(slice(1))[0]
    latency = classifier.latency_us(sample, cfg.latency_runs, cfg.warmup_runs)
    measured = {
        **data.task.scores(predicted, data.test.labels),
        "sparsity": weight_sparsity(model),
        "blocks_2_4": blocks_2_4(model),
        "tflite_bytes": len(model),
        "gzip_bytes": len(gzip.compress(model, compresslevel=9)),
        "latency_p50_us": latency.p50_us,
        "latency_p90_us": latency.p90_us,
        "memory_bytes": classifier.memory_bytes(),
        "xnnpack": float(classifier.kernels == "XNNPACK"),
    }
    for count in thread_counts:
        at = (latency if count == cfg.threads[0] else
              TFLiteClassifier(model, count).latency_us(sample, cfg.latency_runs, cfg.warmup_runs))
        measured |= dict(zip(latency_keys(count), (at.p50_us, at.p90_us)))
    return measured, predicted


def run_evaluate(
    cfg: EvaluateConfig, sparsified: bool, distilled: bool, confidence: float, ws: Workspace,
) -> dict[str, float]:
    """Stage: measure teacher (FP32 .tflite), intermediate models and the final model.

    Writes metrics.json (tasks/measurements.py `RunMetrics`: every candidate, with the final
    model's quantization mode as the quantize stage recorded it, a recurrent model's `int8` being
    dynamic or float16, how many weight layers it stores at each precision, its paired drop vs the
    teacher bounded at `confidence`, the gate's, its `slowdown` vs the teacher timed interleaved
    (tasks/speed.py) bounded alike, its `slowest_ops` (tasks/profile.py), and, with an unlabeled
    pool, `fidelity`: on how many of its certify part's `n` inputs the final model's class differs
    from the teacher's), each candidate's predicted classes on the test split and the teacher's
    and final model's on the certify part (`teacher.unlabeled`, `final.unlabeled`) in
    predictions.npz, and the plots; returns the headline metrics (`RunMetrics.headline`).
    """
    from tasks.models import layer_sparsity, read_model
    from tasks.plots import plot_layer_sparsity, plot_tradeoff
    from tasks.quantize import convert_to_tflite

    data = Dataset.load(ws.data)
    keras_models = {"teacher": ws.teacher}
    if sparsified:
        keras_models["sparsified"] = ws.sparse
    if distilled:
        keras_models["distilled"] = ws.student
    models = {name: read_model(path) for name, path in keras_models.items()}
    tflites = {name: (convert_to_tflite(model), model.count_params())
               for name, model in models.items()}
    final = models["distilled"] if distilled else read_model(ws.student)
    deployed = ws.model.read_bytes()
    tflites["final"] = (deployed, final.count_params())
    candidates, predicted = {}, {}
    for name, (tflite, params) in tflites.items():
        metrics, predicted[name] = measure_tflite(tflite, data, cfg, cfg.threads)
        candidates[name] = CandidateMetrics.of(params, metrics)
    if not candidates["final"].xnnpack:
        log.warning("XNNPACK refused the final model: it was measured on LiteRT's built-in "
                    "kernels, slower (a device's XNNPACK likely refuses it too); a tensor's int8 "
                    "scale is likely out of XNNPACK's range (a layer that is zero on every "
                    "calibration sample): a wider student (distill.width) or another "
                    "quantize.mode avoids it")
    right = {name: data.task.right(predicted[name], data.test.labels)
             for name in ("teacher", "final")}
    drop = paired_drop(right["teacher"], right["final"], confidence)
    sample = data.test.read(slice(1))[0]
    slower = slowdown(deployed, tflites["teacher"][0], sample, cfg, confidence)
    counts = None
    if data.pool:
        unlabeled = {f"{name}.unlabeled": model_answers(
            data.task, TFLiteClassifier(tflites[name][0], cfg.threads[0]).predict,
            data.pool.certify) for name in ("teacher", "final")}
        predicted |= unlabeled
        agreement = fidelity(unlabeled["teacher.unlabeled"], unlabeled["final.unlabeled"],
                             confidence)
        counts = FidelityCounts(agreement.n, agreement.disagree)
    record = RunMetrics(
        candidates, drop,
        Quantization(json.loads(ws.quant_sensitivity.read_text())["mode"],
                     precision_counts(deployed)),
        slower, tuple(slowest_ops(deployed, sample, cfg.threads[0], cfg.latency_runs)),
        data.task.name, counts)
    write_arrays(ws.predictions, predicted)
    record.write(ws.metrics)
    plot_tradeoff({name: measured.as_dict() for name, measured in candidates.items()},
                  ws.plots / "tradeoff.png")
    per_layer = {"sparsified": layer_sparsity(models["sparsified"])} if sparsified else {}
    plot_layer_sparsity(per_layer | {"final": layer_sparsity(final)}, ws.plots / "sparsity.png")
    return record.headline()

