"""Teaching a student: the teacher's logits as soft targets, the distillation loss, and the loop
that trains on them, pruned on the sparsify schedule. Distillation (tasks/distill.py, and each
probe of tasks/auto_width.py), quantization-aware fine-tuning (tasks/qat.py) and the search's
trials (tasks/search.py) all train this way.

The teacher's logits are computed once (`soft_targets`; a search worker keeps them for all its
trials) and packed beside the labels, so distillation is a plain `fit` with one loss and the usual
tfmot pruning callback — no custom training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tasks.config import DistillConfig, SparsifyConfig, Training
from tasks.models import accuracy_metric, as_logits, fit, output_activation
from tasks.sparsify import check_prunable, training_steps, wrap_for_pruning
from tasks.splits import BATCH, Dataset, Split
from tasks.students import check_student
from tasks.task import Task
from tasks.views import consistent_views


def logits(model: keras.Model, split: Split) -> np.ndarray:
    """Pre-activation scores of every sample: for a softmax model, log-probabilities (equal up to
    a constant); for a sigmoid one, log-odds."""
    outputs = model.predict(split.batches(BATCH), verbose=0)
    return np.asarray(as_logits(outputs, output_activation(model)))


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
    """alpha * the labels' loss + (1 - alpha) * T^2 * the loss against the teacher's outputs
    softened by temperature T, for the data's task (tasks/task.py):

    - classification: cross-entropy on the class id, KL(teacher_T || student_T) over classes;
    - multilabel: binary cross-entropy per label, on the labels and on the teacher's softened
      sigmoid (per-output binary soft targets), averaged over labels.

    `y_true` packs the labels first (`label_width` columns) and the teacher's logits after them.
    The T^2 factor keeps the soft-target gradients on the scale of the hard ones (Hinton et al.,
    2015).
    """

    def __init__(self, task: str, temperature: float, alpha: float, activation: str,
                 label_width: int = 1, **kwargs):
        super().__init__(name="distillation", **kwargs)
        self.task, self.activation, self.label_width = task, activation, label_width
        self.temperature = temperature
        self.alpha = alpha

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels, teacher_logits = y_true[:, :self.label_width], y_true[:, self.label_width:]
        student_logits = as_logits(y_pred, self.activation)
        t = self.temperature
        if self.task == "classification":
            hard = keras.losses.sparse_categorical_crossentropy(
                tf.cast(labels[:, 0], tf.int32), student_logits, from_logits=True)
            soft = keras.losses.kl_divergence(
                tf.nn.softmax(teacher_logits / t), tf.nn.softmax(student_logits / t))
        else:
            student_logits = tf.reshape(student_logits, tf.shape(labels))
            hard = keras.losses.binary_crossentropy(labels, student_logits, from_logits=True)
            soft = keras.losses.binary_crossentropy(
                tf.sigmoid(teacher_logits / t), student_logits / t, from_logits=True)
        return self.alpha * hard + (1.0 - self.alpha) * t * t * soft


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
        compile_to_teacher(student, data.task, cfg, cfg.learning_rate)
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


def compile_to_teacher(student: keras.Model, task: Task, cfg: DistillConfig,
                       learning_rate: float) -> None:
    """Compile `student` with the `DistillationLoss` of `task` and `cfg` (temperature, alpha),
    Adam and the task's accuracy on the packed labels."""
    width = 1 if task.name == "classification" else student.output_shape[-1]
    student.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=DistillationLoss(task.name, cfg.temperature, cfg.alpha, output_activation(student),
                              width),
        metrics=[accuracy_metric(task, width)],
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
