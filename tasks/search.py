"""The search's compute: its space (derived from the teacher where not set), one trial, what a trial
costs in memory, and which measured trial to keep.

A trial is the distill and quantize stages' own code (`derive_student`, `distill`,
`quantize_student`; no quantization-aware training: `run_trial`) run with the trial's choices
applied to the params, measured by the evaluator (`evaluate_tflite`) on the validation split's
*selection* part, and compared with the teacher, paired, on both parts of the validation split
(tasks/paired.py). What it aims at is the gate: a trial counts when its chance of passing the
gate's rule on the test split, from its paired counts on a part (tasks/power.py
`chance_to_pass`), is at least LIKELY. Before any training its size and latency are estimated
(tasks/estimate.py): a trial that cannot beat the best size found so far is not trained.
The search starts from what the stages would run without it (`defaults_recipes`) and may only
improve on it, in size and speed (`choose`).
Sampling, scheduling and recording live in flows/search.py and flows/trials.py; nothing here
knows Optuna, Prefect, Dask or MLflow.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tf_keras as keras

from tasks.channels import teacher_widths
from tasks.choice import Choice
from tasks.config import Params, SearchConfig
from tasks.data import split_validation
from tasks.estimate import SizeEstimate, estimate_candidate
from tasks.evaluate import measure_tflite, model_answers
from tasks.fidelity import Fidelity, fidelity
from tasks.friendly import activation_choices, block_choices, downsample_choices
from tasks.measurements import CandidateMetrics
from tasks.models import read_model, seed_everything, write_model
from tasks.paired import PairedDrop, paired_drop
from tasks.power import GateRule, chance_to_certify, chance_to_pass
from tasks.progress import epoch_listener
from tasks.quantize import convert_to_tflite, quantize_student
from tasks.speed import SAME_SPEED, Slowdown, slowdown
from tasks.splits import Dataset
from tasks.students import Rung, derive_student, student_ladder
from tasks.teaching import SoftTargets, distill, soft_targets
from tasks.tflite import TFLiteClassifier

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
BYTES_PER_WEIGHT = 4
# Per weight of the teacher: itself, a student up to as wide, its gradients and Adam's two slots.
WEIGHT_COPIES = 5
BATCHES_IN_FLIGHT = 8  # float32 batches in tf.data's parallel reads and prefetch buffer, generously
RUNTIME_BYTES = 400 * 2**20  # TensorFlow and Python in a worker process, measured here ~350 MiB
OBJECTIVE_KEYS = {"smaller_gzip": "gzip_bytes", "faster": "latency_p50_us"}
# How far a trained trial may come out below its estimate (tasks/estimate.py, measured on digits:
# gzip within 1.5 %, float16 up to 7 %; latency on a shared 2-core machine: tens of percent). A
# trial is skipped only when its estimate is this much above the best: none that could win is lost.
ESTIMATE_MARGIN = {"gzip_bytes": 0.1, "latency_p50_us": 0.5}
# A trial's key (row and Optuna user attribute) when it runs a recipe of `defaults_recipes`: its
# place among them, 0 the smallest student.
DEFAULTS = "defaults"

# Told (epoch, the float student's validation accuracy drop vs the teacher) after every epoch;
# True stops the trial (HopelessTrial). The search's pruner decides; this module does not.
Stopper = Callable[[int, float], bool]
# The best objective value among the trials likely to pass so far (inf: none yet), asked before
# training and after every epoch: a trial stops as soon as another has made it one that cannot win.
Best = Callable[[], float]


class HopelessTrial(Exception):
    """A trial stopped during training: its pruner judged it hopeless."""


class CannotBeat(Exception):
    """A trial not trained, or not trained further: its size or latency, estimated before
    training, cannot beat the best trial likely to pass the gate so far."""

    def __init__(self, estimate: SizeEstimate, key: str, best: float):
        super().__init__(f"estimated {key} {getattr(estimate, key):g} cannot beat {best:g}, the "
                         "best likely to pass so far")
        self.estimate = estimate


@dataclass(frozen=True)
class SearchInputs:
    """What every trial of a worker shares, read and computed once per process: the data with
    the validation split's selection part in the validation's place, the confirmation part, the
    teacher, its FP32 .tflite (what the evaluator measures), its logits (soft targets), which
    samples of each part it gets right and its classes on the unlabeled pool's choose part (None
    without a pool)."""

    teacher: keras.Model
    teacher_tflite: bytes
    selection: Dataset
    confirmation: Dataset
    targets: SoftTargets
    teacher_right: tuple[np.ndarray, np.ndarray]  # on selection, on confirmation
    teacher_choice: np.ndarray | None = None

    @property
    def teacher_accuracy(self) -> float:
        return float(np.mean(self.teacher_right[0]))


@dataclass(frozen=True)
class TrialResult:
    """A trained trial: the evaluator's metrics on the selection part, its paired drop vs the
    teacher on the selection part (what the sampler and pruner see) and on the confirmation part
    (what only the final choice reads), and its slowdown vs the teacher (the gate's speed floor)."""

    metrics: CandidateMetrics
    selection: PairedDrop
    confirmation: PairedDrop
    slowdown: Slowdown
    epochs: int  # trained by this trial: 0 when it quantized a student another trial trained
    choice: Fidelity | None = None  # its disagreement with the teacher on the pool's choose part

    def chances(self, rule: GateRule) -> tuple[float, float]:
        """Its chance of passing `rule` on the test split, from each part's paired counts; on the
        selection part, with a pool, the greater of that and its chance of being certified by
        fidelity (the choose part chooses; it never confirms: the sampler has seen it)."""
        selection, confirmation = (chance_to_pass(rule, drop.worse, drop.better, drop.n)
                                   for drop in (self.selection, self.confirmation))
        if self.choice:
            selection = max(selection, chance_to_certify(rule, self.choice.disagree,
                                                         self.choice.n))
        return selection, confirmation


def search_space(cfg: SearchConfig, params: Params, teacher: keras.Model,
                 defaults: list[Choice] | None = None) -> dict[str, list]:
    """Each searched key and its choices: the configured lists, widths, activations, blocks and
    downsample derived from the teacher and the configured temperature where none are listed,
    and every value of the `defaults` recipes (`defaults_recipes` unless given) not among them:
    the search can always ship what the stages would run without it."""
    listed = {
        "distill.width": cfg.widths or teacher_widths(teacher, "search.widths"),
        "sparsify.final_sparsity": cfg.sparsities,
        "sparsify.pattern": cfg.patterns,
        "quantize.mode": cfg.modes,
        "distill.temperature": cfg.temperatures or [params.distill.temperature],
        "distill.activations": cfg.activations or activation_choices(
            teacher, params.distill.activations),
        "distill.blocks": cfg.blocks or block_choices(teacher),
        "distill.downsample": cfg.downsample or downsample_choices(teacher),
    }
    recipes = defaults_recipes(params, teacher) if defaults is None else defaults
    return {key: choices + [value for value in dict.fromkeys(recipe[key] for recipe in recipes)
                            if value not in choices] for key, choices in listed.items()}


def defaults_recipes(params: Params, teacher: keras.Model) -> list[Choice]:
    """What the stages would run with the search off, as the search's keys, smallest student
    first: the configured recipe, or with distill.width `auto` one per rung of its ladder
    (`student_ladder`), of which the defaults ship the smallest likely to pass the gate. At a
    fixed width, distill.blocks and downsample `auto` are `all` and `keep` (as `derive_student`
    reads them). Smallest first: once one is likely to pass and confirmed, the larger ones
    cannot beat it and are not trained (`run_trial`), as `auto` probes no wider rung then."""
    d = params.distill
    rungs = (student_ladder(teacher, d, params.sparsify) if d.width == "auto" else
             [Rung(d.width, "all" if d.blocks == "auto" else d.blocks,
                   "keep" if d.downsample == "auto" else d.downsample)])
    configured = {"sparsify.final_sparsity": params.sparsify.final_sparsity,
                  "sparsify.pattern": params.sparsify.pattern,
                  "quantize.mode": params.quantize.mode,
                  "distill.temperature": d.temperature, "distill.activations": d.activations}
    return [configured | {"distill.width": rung.width, "distill.blocks": rung.blocks,
                          "distill.downsample": rung.downsample} for rung in reversed(rungs)]


def run_trial(inputs: SearchInputs, params: Params, best: Best, stop: Stopper,
              student_path: Path) -> TrialResult:
    """One trial, as the stages would run it with `params` (a choice applied), but without
    quantization-aware training: a width-scaled student distilled (and pruned) from the teacher,
    kept at `student_path` (the distill stage's output, should the trial be chosen), quantized as
    trained, then measured. With quantize.qat_epochs the search tries int8 only (Params refuses
    other modes) and the quantize stage fine-tunes the chosen student before converting it: the
    trials measure it without the accuracy QAT may recover, the gate with it. A student
    already at `student_path` (trained by a trial that differed only in what quantization does
    after training) is quantized as it is: training it again would give the same student.

    Raises CannotBeat, before any training or after an epoch, when the estimate of
    `search.objective`'s key is not below `best()` (by ESTIMATE_MARGIN), and HopelessTrial when
    `stop` says so after an epoch."""
    key = OBJECTIVE_KEYS[params.search.objective]
    estimate = estimate_candidate(inputs.teacher, inputs.selection, params)

    def can_beat() -> None:
        if getattr(estimate, key) >= (beat := best()) * (1 + ESTIMATE_MARGIN[key]):
            raise CannotBeat(estimate, key, beat)

    can_beat()
    trained = not student_path.exists()
    student = (_distilled(inputs, params, stop, can_beat) if trained
               else read_model(student_path))
    if trained:
        write_model(student, student_path)
    model = quantize_student(student, inputs.selection, params.quantize, params.seed).tflite
    measured, predicted = measure_tflite(model, inputs.selection.for_selection(), params.evaluate)
    right = (inputs.selection.task.right(predicted, inputs.selection.val.labels),
             _correct(TFLiteClassifier(model), inputs.confirmation))
    selection, confirmation = (paired_drop(teacher, trial, params.gate.confidence)
                               for teacher, trial in zip(inputs.teacher_right, right))
    choice = None if inputs.teacher_choice is None else fidelity(
        inputs.teacher_choice, model_answers(inputs.selection.task,
                                             TFLiteClassifier(model).predict,
                                             inputs.selection.pool.choose),
        params.gate.confidence)
    slower = slowdown(model, inputs.teacher_tflite, inputs.selection.val.read(slice(1))[0],
                      params.evaluate, params.gate.confidence)
    return TrialResult(CandidateMetrics.of(student.count_params(), measured), selection,
                       confirmation, slower, params.distill.epochs if trained else 0, choice)


def _distilled(inputs: SearchInputs, params: Params, stop: Stopper,
               can_beat: Callable[[], None]) -> keras.Model:
    """The trial's student, derived from the teacher and distilled (and pruned), stopped after an
    epoch by `stop` or `can_beat`."""
    seed_everything(params.seed)
    token = epoch_listener.set(_stopping(stop, can_beat, params.distill.epochs,
                                         inputs.teacher_accuracy))
    try:
        student = derive_student(inputs.teacher, params.distill.width, params.distill.init,
                                 params.distill.activations, params.distill.blocks,
                                 params.distill.downsample)
        return distill(inputs.teacher, student, inputs.selection, params.distill,
                       params.sparsify, inputs.targets)
    finally:
        epoch_listener.reset(token)


def _stopping(stop: Stopper, can_beat: Callable[[], None], epochs: int, teacher_accuracy: float):
    def listen(fraction: float, logs: dict[str, float]) -> None:
        accuracy = next((v for k, v in logs.items()
                         if k.startswith("val_") and k.endswith("accuracy")), None)
        epoch = round(fraction * epochs)  # after the last one, stopping would save nothing
        if accuracy is not None and epoch < epochs and stop(epoch, teacher_accuracy - accuracy):
            raise HopelessTrial(f"stopped after {epoch} epochs: validation drop "
                                f"{teacher_accuracy - accuracy:+.4f} vs the teacher")
        if epoch < epochs:
            can_beat()

    return listen


def _correct(classifier: TFLiteClassifier, data: Dataset) -> np.ndarray:
    return data.task.right(model_answers(data.task, classifier.predict, data.val),
                           data.val.labels)


def search_inputs(data: Dataset, teacher: keras.Model, confirm_fraction: float,
                  seed: int) -> SearchInputs:
    """Split the validation split into selection and confirmation parts and measure the teacher
    (as the evaluator does: its FP32 .tflite) on both."""
    selection, confirmation = split_validation(data, confirm_fraction, seed)
    tflite = convert_to_tflite(teacher)
    classifier = TFLiteClassifier(tflite)
    choice = (model_answers(data.task, classifier.predict, data.pool.choose) if data.pool
              else None)
    return SearchInputs(teacher, tflite, selection, confirmation, soft_targets(teacher, selection),
                        (_correct(classifier, selection), _correct(classifier, confirmation)),
                        choice)


@functools.lru_cache(maxsize=1)
def _read_inputs(data: Path, data_stamp: tuple[int, int], teacher: Path,
                 teacher_stamp: tuple[int, int], confirm_fraction: float,
                 seed: int) -> SearchInputs:
    return search_inputs(Dataset.load(data), read_model(teacher), confirm_fraction, seed)


def cached_inputs(data: Path, teacher: Path, confirm_fraction: float, seed: int) -> SearchInputs:
    """The search's inputs, read once per process (a Dask worker runs many trials) and again only
    when a file was replaced (its size or mtime changed: no re-hashing per trial)."""
    return _read_inputs(data, _stamp(data), teacher, _stamp(teacher), confirm_fraction, seed)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def trial_memory_bytes(teacher: keras.Model, data: Dataset, batch_size: int) -> int:
    """A generous estimate of one trial's peak memory, from the model's and the data's sizes:
    the runtime, the data held in memory (none for streamed images), the teacher's logits, the
    batches in flight, the weights (teacher, student, gradients, Adam) and one batch of
    activations forward and back."""
    samples = sum(len(split) for split in data.splits.values())
    data_bytes = (data.memory_bytes + samples * data.num_classes * BYTES_PER_WEIGHT
                  + BATCHES_IN_FLIGHT * batch_size * math.prod(data.input_shape) * BYTES_PER_WEIGHT)
    weights = teacher.count_params() * BYTES_PER_WEIGHT
    activations = sum(math.prod(shape[1:]) for layer in teacher.layers
                      if isinstance(shape := layer.output_shape, tuple) and None not in shape[1:])
    return (RUNTIME_BYTES + data_bytes + WEIGHT_COPIES * weights
            + 2 * batch_size * activations * BYTES_PER_WEIGHT)


def validation_parts(validation_samples: int, cfg: SearchConfig) -> tuple[int, int]:
    """Sizes of the selection and confirmation parts (scikit-learn rounds the held part up)."""
    confirmation = math.ceil(validation_samples * cfg.confirm_fraction)
    return validation_samples - confirmation, confirmation


def pareto_front(trials: list[dict], objective: str) -> set[int]:
    """Numbers of the trials no other trial beats on both the chance to pass and the objective."""
    key = OBJECTIVE_KEYS[objective]
    return {t["number"] for t in trials
            if not any(o["chance"] >= t["chance"] and o[key] <= t[key]
                       and (o["chance"], o[key]) != (t["chance"], t[key]) for o in trials)}


def closest_trials(measured: list[dict], shown: int = 3) -> list[dict]:
    """The `shown` measured trials with the greatest chance to pass, each choice once (a repeat
    of a choice is the same measurement: it named the same trial three times)."""
    first = [row for row in measured if "repeat_of" not in row]
    return sorted(first, key=lambda row: -row["chance"])[:shown]


def choose(trials: list[dict], objective: str) -> tuple[dict | None, list[dict]]:
    """The best trial on `objective` (ties: the defaults' recipe, then the greater chance) among
    those likely to pass the gate from the selection part (`within`: chance >= LIKELY) and no
    worse than the defaults' candidate (`defaults_candidate`, `no_worse`), tried in that order
    until one is confirmed (`confirmed`: chance >= CONFIRMED from the confirmation part, which
    no sampler or pruner saw: the guard against the winner's curse); and those refused at
    confirmation on the way. None when no trial is all that. When the defaults' candidate was
    measured, the choice is it or a trial that beats it: at most as large and as fast."""
    reference = defaults_candidate(trials)
    return _first_confirmed([t for t in trials if not reference or no_worse(t, reference)],
                            OBJECTIVE_KEYS[objective])


def defaults_candidate(trials: list[dict]) -> dict | None:
    """What the stages would ship without the search, as far as the search measured it: the
    smallest (gzip) of the trials of the defaults' recipes likely to pass and confirmed
    (distill.width `auto` ships the smallest rung likely to pass); None when none is."""
    return _first_confirmed([t for t in trials if DEFAULTS in t], "gzip_bytes")[0]


def no_worse(trial: dict, reference: dict) -> bool:
    """Whether `trial` is at most as large (gzip) as `reference` and not slower beyond noise:
    its slowdown vs the teacher bounded above the reference's by more than SAME_SPEED. Each was
    timed interleaved with the teacher, so the ratios to it compare across trials run at
    different loads. Issue 50: on bytes alone, the search shipped a `mixed` student (INT4
    kernels, slow on x86) 8x slower than the defaults' int8 one (and, pruned early, larger)."""
    return (trial["gzip_bytes"] <= reference["gzip_bytes"]
            and trial["slowdown_lower"] <= reference["slowdown_upper"] * (1 + SAME_SPEED))


def _first_confirmed(trials: list[dict], key: str) -> tuple[dict | None, list[dict]]:
    refused = []
    for trial in sorted((t for t in trials if t["within"]),
                        key=lambda t: (t[key], DEFAULTS not in t, -t["chance"])):
        if trial["confirmed"]:
            return trial, refused
        refused.append(trial)
    return None, refused
