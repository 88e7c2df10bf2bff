"""Knowledge distillation from the dense teacher into a (narrower, sparse) student.

The teacher's logits are computed once (`soft_targets`; a search worker keeps them for all its
trials) and packed beside the labels, so distillation is a plain `fit` with one loss and the usual
tfmot pruning callback — no custom training loop.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tasks.artifacts import Workspace, copy_file
from tasks.channels import (
    copy_top_channels,
    narrowed_units,
    output_layer,
    teacher_widths,
    width_key,
)
from tasks.config import (
    DistillConfig,
    GateConfig,
    SparsifyConfig,
    StudentActivations,
    StudentBlocks,
    StudentDownsample,
    StudentInit,
    Training,
)
from tasks.errors import InputError
from tasks.evaluate import predicted_classes
from tasks.fidelity import fidelity
from tasks.friendly import (
    BLOCKS_KEPT,
    DOWNSAMPLE_ORDER,
    block_choices,
    downsample_choices,
    downsampled_early,
    friendly_rewrites,
    without_blocks,
)
from tasks.gate import RuleChoice, rule_for
from tasks.inputs import distill_inputs, read_steadily
from tasks.models import (
    EPSILON,
    as_logits,
    fit,
    kernels,
    outputs_probabilities,
    overall_sparsity,
    read_model,
    seed_everything,
    write_model,
)
from tasks.paired import PairedDrop, paired_drop
from tasks.power import CONFIRMED, chance_to_certify, chance_to_pass
from tasks.sparsify import check_prunable, final_sparsities, training_steps, wrap_for_pruning
from tasks.splits import BATCH, Dataset, Split
from tasks.views import consistent_views

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)

# distill.width `auto`: a probe is this share of the distillation, judged once at its end
# (docs/decisions.md: traced on digits, a probe's chance after a third of its epochs agreed with
# its chance at the end about as often as a later epoch's did: each is one noisy look).
PROBE_SHARE = 1 / 3


def derive_student(source: keras.Model, width: float, init: StudentInit,
                   activations: StudentActivations = "keep", blocks: StudentBlocks = "all",
                   downsample: StudentDownsample = "keep") -> keras.Model:
    """`source`'s architecture with every layer but the output `width` times as wide, made
    quantization-friendly (tasks/friendly.py: squeezes keep their dims; `activations`; the
    residual `blocks` left out; a stride moved early by `downsample`).

    `filters`, `units` and `output_dim` are scaled (tasks/channels.py `narrowed_units`); the
    output layer (the last layer that has one) keeps its size so the student predicts the same
    classes. Weights are freshly initialised (`random`) or `source`'s own, sliced to each layer's
    channels with the largest L1 norms (`teacher`).

    A Reshape that keeps the channels last (squeeze-and-excitation's (C,) -> (1, 1, C)) has a
    fixed target shape that would not fit the narrower student: a first build lets it infer its
    channels (-1), a second fixes them. -1 alone leaves them unknown in the traced graph (its
    batch is dynamic), and the TFLite converter refuses the Conv2D after it as a flex op.
    """
    try:
        source = without_blocks(source, blocks)
    except Exception as exc:  # a layer whose config does not rebuild without the blocks
        raise InputError(f"distill.blocks {blocks}: cannot leave out {source.name}'s residual "
                         f"blocks ({exc}); use distill.blocks: all") from exc
    try:
        source = downsampled_early(source, downsample)
    except Exception as exc:  # a layer whose config does not rebuild with the strides moved
        raise InputError(f"distill.downsample {downsample}: cannot move a stride of "
                         f"{source.name} ({exc}); use distill.downsample: keep") from exc
    output = output_layer(source)
    rewrites = friendly_rewrites(source, activations)
    reshapes = {layer.name: None for layer in source.layers
                if keeps_channels_last(layer) and layer.name not in rewrites}

    def narrowed(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        key = width_key(layer)
        if key and layer is not output:
            config[key] = narrowed_units(config[key], width)
        elif layer.name in reshapes:
            config["target_shape"] = reshapes[layer.name] or (*config["target_shape"][:-1], -1)
        rewrite = rewrites.get(layer.name)
        return rewrite(layer, config) if rewrite else type(layer).from_config(config)

    try:
        student = keras.models.clone_model(source, clone_function=narrowed)
        if reshapes:
            reshapes.update({name: student.get_layer(name).output_shape[1:] for name in reshapes})
            student = keras.models.clone_model(source, clone_function=narrowed)
    except Exception as exc:  # shape errors from fixed reshapes, layers that refuse new sizes
        raise InputError(
            f"distill.width: cannot derive a {width}-wide student from {source.name} ({exc}); "
            "use distill.width: 1.0 or give a student model file as distill.student"
        ) from exc
    if init == "teacher":
        copy_top_channels(source, student)
    return student


def keeps_channels_last(layer: keras.layers.Layer) -> bool:
    """A Reshape whose fixed target shape ends in its input's channels."""
    return (isinstance(layer, keras.layers.Reshape) and -1 not in layer.target_shape
            and layer.target_shape[-1] == layer.input_shape[-1])


class Rung(NamedTuple):
    """A student distill.width `auto` may derive."""

    width: float
    blocks: StudentBlocks = "all"
    downsample: StudentDownsample = "keep"


# Bytes per output channel of a layer with a kernel in an int8 .tflite, after gzip: a float32
# kernel scale, an int32 bias and its float32 scale (per-channel quantization; the int64 zero
# points are zeros, which gzip folds away)
CHANNEL_BYTES = 12


def student_ladder(teacher: keras.Model, cfg: DistillConfig,
                   sparsify_cfg: SparsifyConfig) -> list[Rung]:
    """distill.width `auto`'s students, largest first as deployed (`deployed_bytes`): each of the
    teacher's widths (tasks/channels.py `teacher_widths`) with distill.blocks and
    distill.downsample, or for `auto` with each choice that derives a different student
    (tasks/friendly.py `block_choices`, `downsample_choices`). A narrower student with more
    blocks may be larger than a wider one with fewer (ResNet50: width 0.5 without its identity
    blocks sits between 0.354 and 0.25 with them). Moving a stride changes no weight: the rung
    that downsamples early follows its twin (as large, faster)."""
    ladder = _rungs(teacher, cfg)
    if len({rung.blocks for rung in ladder}) == 1:
        return ladder
    sizes = {(rung.width, rung.blocks): deployed_bytes(derive_student(
        teacher, rung.width, "random", cfg.activations, rung.blocks), sparsify_cfg)
        for rung in ladder if rung.downsample == "keep"}
    return sorted(ladder, key=lambda rung: -sizes[rung.width, rung.blocks])  # stable: twins


def deployed_bytes(student: keras.Model, sparsify_cfg: SparsifyConfig) -> float:
    """About the gzip bytes of `student`'s int8 .tflite once distill has pruned it on
    `sparsify_cfg`: a byte per kernel weight pruning keeps, plus CHANNEL_BYTES per output channel.
    Gotcha: as `final_sparsities`, it changes `student`'s layers: give it a throwaway model.

    Parameters alone misorder students of different depths: MobileNetV2 0.5 at width 0.177
    keeping half its blocks (26.6 k params) is larger deployed than at 0.25 keeping none (34.0 k):
    29.4 vs 27.5 KiB gzip, measured untrained (tasks/estimate.py): more layers, more channels, and
    small layers stay denser (`size_aware`). This estimate ordered its 15 rungs as measured but
    for one pair 1 % apart, without converting any."""
    sparsities = final_sparsities(student, sparsify_cfg, check_prunable(
        student, sparsify_cfg)) if sparsify_cfg.enabled else {}
    total = 0.0
    for name, kernel in kernels(student).items():  # "conv/kernel": its weights
        layer, weight = name.split("/")
        outputs = math.prod(kernel.shape[-2:]) if weight == "depthwise_kernel" else kernel.shape[-1]
        total += kernel.size * (1 - sparsities.get(layer, 0.0)) + CHANNEL_BYTES * outputs
    return total


def smallest_student(teacher: keras.Model, cfg: DistillConfig) -> keras.Model:
    """The smallest student distill derives from `teacher` (untrained), for the pre-flight
    checks: distill.width, or for `auto` the ladder's last."""
    rung = _rungs(teacher, cfg)[-1] if cfg.width == "auto" else Rung(
        cfg.width, cfg.blocks, cfg.downsample)
    return derive_student(teacher, rung.width, cfg.init, cfg.activations, rung.blocks,
                          rung.downsample)


def _rungs(teacher: keras.Model, cfg: DistillConfig) -> list[Rung]:
    """`student_ladder`'s rungs, widest first, most blocks first within a width, the teacher's
    strides first within blocks: the last is the smallest."""
    blocks = block_choices(teacher) if cfg.blocks == "auto" else [cfg.blocks]
    downsample = downsample_choices(teacher) if cfg.downsample == "auto" else [cfg.downsample]
    return [Rung(*rung) for rung in itertools.product(
        teacher_widths(teacher, "distill.width"), blocks, downsample)]


def check_student(student: keras.Model, teacher: keras.Model) -> None:
    """Student and teacher must take the same inputs and predict the same classes."""
    if student.output_shape[-1] != teacher.output_shape[-1]:
        raise InputError(
            f"distill.student: the student has {student.output_shape[-1]} outputs, the teacher "
            f"{teacher.output_shape[-1]}; they must predict the same classes"
        )
    if student.input_shape[1:] != teacher.input_shape[1:]:
        raise InputError(
            f"distill.student: the student takes inputs of shape {student.input_shape[1:]}, the "
            f"teacher {teacher.input_shape[1:]}; they must take the same samples"
        )


def logits(model: keras.Model, split: Split) -> np.ndarray:
    """Pre-softmax scores of every sample; for a softmax model, log-probabilities (equal up to a
    constant)."""
    outputs = model.predict(split.batches(BATCH), verbose=0)
    return np.log(outputs + EPSILON) if outputs_probabilities(model) else outputs


@dataclass(frozen=True)
class SoftTargets:
    """The teacher and its logits on the training and validation splits of one data set (on
    augmented views it runs again: tasks/views.py)."""

    teacher: keras.Model
    train: np.ndarray
    val: np.ndarray


def soft_targets(teacher: keras.Model, data: Dataset) -> SoftTargets:
    return SoftTargets(teacher, logits(teacher, data.train), logits(teacher, data.val))


class DistillationLoss(keras.losses.Loss):
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    `y_true` packs the label in column 0 and the teacher's logits after it. The T^2 factor keeps
    the soft-target gradients on the scale of the hard ones (Hinton et al., 2015).
    """

    def __init__(self, temperature: float, alpha: float, student_probabilities: bool, **kwargs):
        super().__init__(name="distillation", **kwargs)
        self.temperature = temperature
        self.alpha = alpha
        self.student_probabilities = student_probabilities

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels, teacher_logits = tf.cast(y_true[:, 0], tf.int32), y_true[:, 1:]
        student_logits = as_logits(y_pred, self.student_probabilities)
        hard = keras.losses.sparse_categorical_crossentropy(labels, student_logits, from_logits=True)
        t = self.temperature
        soft = keras.losses.kl_divergence(
            tf.nn.softmax(teacher_logits / t), tf.nn.softmax(student_logits / t)
        )
        return self.alpha * hard + (1.0 - self.alpha) * t * t * soft


def packed_accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Accuracy against the label packed in column 0 of `y_true`."""
    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(y_true[:, 0], tf.int32)), tf.float32)


def distill(
    teacher: keras.Model,
    student: keras.Model,
    data: Dataset,
    cfg: DistillConfig,
    sparsify_cfg: SparsifyConfig,
    targets: SoftTargets | None = None,
    callbacks: list[keras.callbacks.Callback] = (),
) -> keras.Model:
    """Train `student` to match the teacher's softened outputs and the labels for `cfg.epochs`.

    With sparsify enabled the student is pruned on the sparsify schedule while it learns, so it
    leaves this stage as sparse as the sparsify target (unless a callback stops it early).
    `targets`: the teacher's logits on `data` when already computed.
    """
    return Distillation(teacher, student, data, cfg, sparsify_cfg, targets).train(
        cfg.epochs, callbacks).student()


class Distillation:
    """A student learning from the teacher that can pause and go on: wrapped for pruning on the
    schedule of all `cfg.epochs` and compiled once, so `train` resumes with the same optimizer
    state and pruning step (distill.width `auto`: a probe's first epochs, then the chosen
    probe's rest). `model` is the student in training, `epochs` how many it has trained."""

    def __init__(self, teacher: keras.Model, student: keras.Model, data: Dataset,
                 cfg: DistillConfig, sparsify_cfg: SparsifyConfig,
                 targets: SoftTargets | None = None):
        check_student(student, teacher)
        self.pruned, self.callbacks = sparsify_cfg.enabled, []
        if self.pruned:
            skipped = check_prunable(student, sparsify_cfg)
            steps = training_steps(len(data.train), cfg.epochs, cfg.batch_size)
            student = wrap_for_pruning(student, sparsify_cfg, steps, skipped)
            self.callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
        compile_to_teacher(student, cfg, cfg.learning_rate)
        self.model, self.data, self.cfg, self.epochs = student, data, cfg, 0
        self.targets = targets or soft_targets(teacher, data)

    def train(self, until: int, callbacks: list[keras.callbacks.Callback] = ()) -> Distillation:
        """Train on to epoch `until` (fewer when a callback stops it)."""
        if until > self.epochs:
            history = fit_to_teacher(self.model, self.targets, self.data, self.cfg,
                                     self.cfg.model_copy(update={"epochs": until}),
                                     [*self.callbacks, *callbacks], initial_epoch=self.epochs)
            self.epochs = history.epoch[-1] + 1 if history.epoch else self.epochs
        return self

    def student(self) -> keras.Model:
        """The student as trained so far, without the pruning wrappers."""
        return tfmot.sparsity.keras.strip_pruning(self.model) if self.pruned else self.model


def compile_to_teacher(student: keras.Model, cfg: DistillConfig, learning_rate: float) -> None:
    """Compile `student` with the `DistillationLoss` of `cfg` (temperature, alpha) and Adam."""
    student.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=DistillationLoss(cfg.temperature, cfg.alpha, outputs_probabilities(student)),
        metrics=[packed_accuracy],
    )


def fit_to_teacher(
    student: keras.Model,
    targets: SoftTargets,
    data: Dataset,
    cfg: DistillConfig,
    training: Training,
    callbacks: list[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> keras.callbacks.History:
    """Train `student`, compiled by `compile_to_teacher`, (`training`: up to its epochs from
    `initial_epoch`, batch size) on the labels packed with the teacher's logits: on
    `cfg.augment`'s views, the teacher's logits on each view.

    Distillation and quantization-aware fine-tuning (tasks/qat.py) both train this way."""
    views = None
    if cfg.augment != "none":
        views = consistent_views(data.train.batches(training.batch_size, shuffle=True),
                                 targets.teacher, cfg.augment)
    return fit(student, data, training, callbacks, targets=(targets.train, targets.val),
               training=views, initial_epoch=initial_epoch)


@dataclass(frozen=True)
class Probe:
    """One rung width `auto` tried: its student's paired drop vs the teacher on validation
    after the probe's epochs, its chance to pass the gate, and those epochs."""

    drop: PairedDrop
    chance: float
    epochs: int


class AutoWidth(NamedTuple):
    """What distill.width `auto` chose: the rung, its student trained on all of the epochs,
    every probe, and the epochs trained in all (probes and the trained-on rest)."""

    rung: Rung
    student: keras.Model
    probes: dict[Rung, Probe]
    epochs: int


def smallest_likely(
    teacher: keras.Model, data: Dataset, cfg: DistillConfig, sparsify_cfg: SparsifyConfig,
    gate: GateConfig, seed: int,
) -> AutoWidth:
    """distill.width `auto`: the smallest student of the ladder (`student_ladder`: the teacher's
    widths, with distill.blocks `auto` each with each choice of blocks) that is likely to pass
    the gate: its chance of passing the gate's rule on the test split, from its
    paired counts vs the teacher on the validation split, at least CONFIRMED (tasks/power.py: the
    search's final choice needs as much; measured on digits, LIKELY let the search's last
    probes, each as close to the teacher on 144 samples, narrow to a student 1.1 pt worse on
    test). With data.unlabeled, a probe's disagreement with the teacher on the pool's choose part
    counts too: its chance is the greater of the two. Each probe is the first PROBE_SHARE of a
    distillation, judged once at its end; the chosen one then trains on to all of `cfg.epochs`
    (a second look at a near miss trained on instead was refused: docs/decisions.md)."""
    ladder = student_ladder(teacher, cfg, sparsify_cfg)
    rule = rule_for(gate, data)
    if cannot_narrow(rule, len(data.val), len(data.pool.choose) if data.pool else 0):
        ladder = ladder[:1]
    targets = soft_targets(teacher, data)
    teacher_right = targets.val.argmax(axis=-1) == data.val.labels
    teacher_choice = chosen_classes(teacher, data)
    probe_epochs = math.ceil(PROBE_SHARE * cfg.epochs)
    runs: dict[Rung, Distillation] = {}
    probes: dict[Rung, Probe] = {}

    def measure(student: keras.Model) -> tuple[PairedDrop, float, str]:
        right = logits(student, data.val).argmax(axis=-1) == data.val.labels
        drop = paired_drop(teacher_right, right, gate.confidence)
        chance, found = chance_to_pass(rule.rule, drop.worse, drop.better, drop.n), drop.describe()
        if teacher_choice is not None:  # fidelity on the pool's choose part can certify too
            agree = fidelity(teacher_choice, chosen_classes(student, data), gate.confidence)
            chance = max(chance, chance_to_certify(rule.rule, agree.disagree, agree.n))
            found += f"; choose part: {agree.describe()}"
        return drop, chance, found

    def likely(rung: Rung) -> bool:
        seed_everything(seed)
        student = derive_student(teacher, rung.width, cfg.init, cfg.activations, rung.blocks,
                                 rung.downsample)
        run = runs[rung] = Distillation(teacher, student, data, cfg, sparsify_cfg,
                                        targets).train(probe_epochs)
        drop, chance, found = measure(run.model)
        probes[rung] = Probe(drop, chance, run.epochs)
        log.info("distill.width auto: %s %s after %d of %d epochs (chance %.2f to pass the "
                 "gate): validation %s", _named(rung),
                 "likely" if chance >= CONFIRMED else "unlikely", run.epochs, cfg.epochs,
                 chance, found)
        return chance >= CONFIRMED

    rung = smallest_within(ladder, likely)
    chosen = runs[rung].train(cfg.epochs)
    _, chance, found = measure(chosen.model)
    epochs = sum(run.epochs for run in runs.values())
    log.info("distill.width auto: %s trained on to %d epochs (chance %.2f): validation %s; %d "
             "probes, %d epochs trained in all", _named(rung), chosen.epochs, chance, found,
             len(probes), epochs)
    return AutoWidth(rung, chosen.student(), probes, epochs)


def _named(rung: Rung) -> str:
    """`0.25`, or with what it changes: `0.25 blocks fewest downsample early`."""
    return " ".join([f"{rung.width:g}", *[f"{key} {value}" for key, value, kept in (
        ("blocks", rung.blocks, "all"), ("downsample", rung.downsample, "keep"))
        if value != kept]])


def chosen_classes(model: keras.Model, data: Dataset) -> np.ndarray | None:
    """`model`'s classes on the unlabeled pool's choose part; None without a pool."""
    return predicted_classes(model.predict, data.pool.choose) if data.pool else None


def cannot_narrow(rule: RuleChoice, validation_samples: int, choose_inputs: int = 0) -> bool:
    """Whether even a student that agrees with the teacher on every validation sample (and every
    input of the pool's choose part) would be unlikely to pass the gate (`certified` on a test
    split too small for it): distill.width `auto` then distills the widest width alone, warned:
    probing narrower ones would only cost distillations."""
    if max(chance_to_pass(rule.rule, 0, 0, validation_samples),
           chance_to_certify(rule.rule, 0, choose_inputs)) >= CONFIRMED:
        return False
    log.warning("distill.width auto: no student is likely to pass the gate (%s within %.2f pt on "
                "%d test samples), so the widest of the teacher's widths is distilled alone",
                rule.rule.require, 100 * rule.rule.budget, rule.rule.n)
    return True


def smallest_within(ladder: list[Rung], within: Callable[[Rung], bool]) -> Rung:
    """The smallest of `ladder` (largest first) that is `within`, asking few rungs. Assumes a
    rung that `covers` another is within when the other is, not that any larger rung is: ResNet50
    at 0.177 without its identity blocks came out worse than at 0.125 with them, though larger
    (docs/benchmarks.md). Each question asks the open rung (`_open`) whose answer, either way,
    settles most open rungs, the smaller on ties (it trains faster): on one choice of blocks,
    bisection. None is within: the first, asked then (no other rung covers it)."""
    answers: dict[Rung, bool] = {}
    kept: Rung | None = None
    while candidates := _open(ladder, answers, kept):
        rung = max(reversed(candidates), key=lambda asked: min(  # settled if within, if not
            candidates.index(asked) + 1, sum(covers(asked, other) for other in candidates)))
        answers[rung] = within(rung)
        kept = rung if answers[rung] else kept
    return kept or ladder[0]


def covers(larger: Rung, smaller: Rung) -> bool:
    """Whether `larger` is at least as wide as `smaller`, keeps every block it keeps and
    downsamples no earlier."""
    return (larger.width >= smaller.width
            and BLOCKS_KEPT.index(larger.blocks) <= BLOCKS_KEPT.index(smaller.blocks)
            and DOWNSAMPLE_ORDER.index(larger.downsample)
            <= DOWNSAMPLE_ORDER.index(smaller.downsample))


def _open(ladder: list[Rung], answers: dict[Rung, bool], kept: Rung | None) -> list[Rung]:
    """The rungs of `ladder` smaller than `kept` (the smallest within so far) that no rung
    found not within `covers`."""
    smaller = ladder[ladder.index(kept) + 1:] if kept else ladder
    return [rung for rung in smaller
            if not any(covers(out, rung) for out, within in answers.items() if not within)]


def run_distill(
    seed: int, cfg: DistillConfig, sparsify_cfg: SparsifyConfig, gate: GateConfig, ws: Workspace,
    trust_code: bool = False,
) -> dict[str, float]:
    """Stage: (teacher, sparse model) -> student. Disabled: the sparse model, unchanged. After a
    search: its chosen trial's student, trained there with the chosen keys (not trained twice).

    A width-scaled student is derived from the dense teacher, not the sparse model: measured
    (README, Benchmarks) it did as well or better, and the sparse model's damage is not inherited.

    `gate`: the rule distill.width `auto` aims its students at. `trust_code`
    (model.trust_code) lets a distill.student file with Lambda layers or custom objects load."""
    if not cfg.enabled:
        copy_file(ws.sparse, ws.student)
        return {}
    if ws.searched_student.exists():
        copy_file(ws.searched_student, ws.student)
        return _student_metrics(read_model(ws.student))
    seed_everything(seed)
    teacher, data = read_model(ws.teacher), Dataset.load(ws.data)
    if cfg.width == "auto" and not cfg.student:
        auto = smallest_likely(teacher, data, cfg, sparsify_cfg, gate, seed)
        write_model(auto.student, ws.student)
        return _student_metrics(auto.student) | {
            "student_width": auto.rung.width, "width_probes": len(auto.probes),
            "width_probe_epochs": sum(probe.epochs for probe in auto.probes.values()),
            "distill_epochs": auto.epochs}
    if cfg.student:
        with read_steadily(distill_inputs(cfg)):
            student = read_model(cfg.student, "distill.student", trust_code)
    elif cfg.width == 1.0:
        student = read_model(ws.sparse)
    else:
        student = derive_student(teacher, cfg.width, cfg.init, cfg.activations, cfg.blocks,
                                 cfg.downsample)
    student = distill(teacher, student, data, cfg, sparsify_cfg)
    write_model(student, ws.student)
    return _student_metrics(student)


def _student_metrics(student: keras.Model) -> dict[str, float]:
    return {"student_params": student.count_params(), "student_sparsity": overall_sparsity(student)}

