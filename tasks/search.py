"""The search's compute: its space (derived from the teacher where not set), one trial, what a trial
costs in memory, and which measured trial to keep.

A trial is the distill and quantize stages' own code (`derive_student`, `distill`,
`quantize_student`) run with the trial's choices applied to the params, measured by the evaluator
(`evaluate_tflite`) on the validation split. Sampling, scheduling and recording live in
flows/search.py; nothing here knows Optuna, Prefect, Dask or MLflow.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import tf_keras as keras

from tasks.channels import output_layer, width_key
from tasks.config import Params, SearchConfig
from tasks.data import Dataset
from tasks.distill import derive_student, distill
from tasks.errors import InputError
from tasks.evaluate import CandidateMetrics, evaluate_tflite
from tasks.models import read_model, seed_everything
from tasks.progress import EpochListener, epoch_listener
from tasks.quantize import quantize_student

MIN_UNITS = 4  # the narrowest layer a derived width may leave
WIDTH_STEP = math.sqrt(2)
FIRST_WIDTH = 0.5
BYTES_PER_WEIGHT = 4
# Per weight of the teacher: itself, a student up to as wide, its gradients and Adam's two slots.
WEIGHT_COPIES = 5
DATA_COPIES = 3  # the arrays, the packed teacher logits and TensorFlow's own copies
RUNTIME_BYTES = 400 * 2**20  # TensorFlow and Python in a worker process, measured here ~350 MiB


class HopelessTrial(Exception):
    """Raised from a trial's epoch listener to stop its training early."""


def search_space(cfg: SearchConfig, params: Params, teacher: keras.Model) -> dict[str, list]:
    """Each searched key and its choices: the configured lists, widths derived from the teacher
    and the configured temperature where none are listed."""
    return {
        "distill.width": cfg.widths or teacher_widths(teacher),
        "sparsify.final_sparsity": cfg.sparsities,
        "sparsify.pattern": cfg.patterns,
        "quantize.mode": cfg.modes,
        "distill.temperature": cfg.temperatures or [params.distill.temperature],
    }


def teacher_widths(teacher: keras.Model) -> list[float]:
    """Widths from 0.5 down by factors of sqrt(2), as long as the teacher's narrowest layer
    (the output layer aside) keeps MIN_UNITS units: relative to this teacher, not to a data set."""
    output = output_layer(teacher)
    units = [layer.get_config()[key] for layer in teacher.layers
             if (key := width_key(layer)) and layer is not output]
    if not units:
        raise InputError("search.widths: the teacher has no layer with filters or units besides "
                         "its output, so no narrower student can be derived; set search.widths")
    widths = []
    width = FIRST_WIDTH
    while round(min(units) * width) >= MIN_UNITS:
        widths.append(round(width, 3))
        width /= WIDTH_STEP
    if not widths:
        raise InputError(f"search.widths: the teacher's narrowest layer has {min(units)} units, so "
                         f"no width of at most {FIRST_WIDTH} keeps {MIN_UNITS}; set search.widths")
    return widths


def run_trial(teacher: keras.Model, data: Dataset, params: Params) -> CandidateMetrics:
    """One trial, exactly as the stages would run it with `params` (a choice applied): a
    width-scaled student distilled (and pruned) from the teacher, quantized, then measured on the
    validation split."""
    seed_everything(params.seed)
    student = derive_student(teacher, params.distill.width, params.distill.init)
    student = distill(teacher, student, data, params.distill, params.sparsify)
    model = quantize_student(student, data, params.quantize, params.seed).tflite
    return evaluate_tflite(model, data.for_selection(), params.evaluate, student.count_params())


def run_trial_or_stop(teacher: keras.Model, data: Dataset, params: Params,
                      floor: float) -> CandidateMetrics:
    """`run_trial`, stopped with `HopelessTrial` when the student's validation accuracy after
    `search.prune_after_epochs` epochs is below `floor`. (Optuna's pruners take one objective
    only; this one watches the accuracy constraint.)"""
    token = epoch_listener.set(hopeless_check(floor, params.search.prune_after_epochs,
                                              params.distill.epochs))
    try:
        return run_trial(teacher, data, params)
    finally:
        epoch_listener.reset(token)


def hopeless_check(floor: float, after_epochs: int, epochs: int) -> EpochListener:
    def check(fraction: float, logs: dict[str, float]) -> None:
        epoch = round(fraction * epochs)
        accuracy = next((v for k, v in logs.items()
                         if k.startswith("val_") and k.endswith("accuracy")), None)
        if epoch == after_epochs and accuracy is not None and accuracy < floor:
            raise HopelessTrial(f"validation accuracy {accuracy:.4f} after {epoch} epochs is "
                                f"below {floor:.4f}")

    return check


@functools.lru_cache(maxsize=1)
def _read_inputs(data: Path, data_stamp: tuple[int, int], teacher: Path,
                 teacher_stamp: tuple[int, int]) -> tuple[Dataset, keras.Model]:
    return Dataset.load(data), read_model(teacher)


def cached_inputs(data: Path, teacher: Path) -> tuple[Dataset, keras.Model]:
    """The data set and teacher, read once per process (a Dask worker runs many trials) and again
    only when a file was replaced (its size or mtime changed: no re-hashing per trial)."""
    return _read_inputs(data, _stamp(data), teacher, _stamp(teacher))


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def trial_memory_bytes(teacher: keras.Model, data: Dataset, batch_size: int) -> int:
    """A generous estimate of one trial's peak memory, from the model's and the data's sizes:
    the runtime, the data, the weights (teacher, student, gradients, Adam) and one batch of
    activations forward and back."""
    arrays = (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test)
    data_bytes = sum(a.nbytes for a in arrays)
    weights = teacher.count_params() * BYTES_PER_WEIGHT
    activations = sum(math.prod(shape[1:]) for layer in teacher.layers
                      if isinstance(shape := layer.output_shape, tuple) and None not in shape[1:])
    return (RUNTIME_BYTES + DATA_COPIES * data_bytes + WEIGHT_COPIES * weights
            + 2 * batch_size * activations * BYTES_PER_WEIGHT)


def choose(trials: list[dict], floor: float, objective: str) -> tuple[dict, bool]:
    """The best measured trial on `objective` (gzip_bytes or latency_p50_us; ties: the more
    accurate) among those at or above the accuracy `floor`, and True; when none is, the most
    accurate (the closest to the budget), and False."""
    key = "gzip_bytes" if objective == "smaller_gzip" else "latency_p50_us"
    feasible = [t for t in trials if t["accuracy"] >= floor]
    if feasible:
        return min(feasible, key=lambda t: (t[key], -t["accuracy"])), True
    return max(trials, key=lambda t: (t["accuracy"], -t[key])), False
