"""The task: what a model's outputs mean and the metric that judges them, one idea every stage
takes (the load stage decides it, the data set's manifest carries it: `Dataset.task`).

- `classification`: one class per sample (softmax or logits, labels class ids); judged by
  top-1 accuracy.
- `multilabel`: independent labels per sample (sigmoid or logits, labels a 0/1 row per sample;
  a single sigmoid output with 0/1 labels is the binary case); judged by exact-match accuracy
  (every label of a sample right), with per-label accuracy and macro-F1 beside it.

The primary metric of both is a per-sample right or wrong, so the paired drop, its bound, the
gate's power and the choices' chance to pass (tasks/paired.py, tasks/power.py) hold for each as
they are. Each task's answer (`answers`: a class id, a row of 0/1 labels) is what the fidelity on
unlabeled inputs compares. Numpy and scikit-learn only: the gate of a run that skipped every
stage imports this too; the losses that teach each task live in tasks/teaching.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from tasks.errors import InputError

TaskName = Literal["classification", "multilabel"]
Activation = Literal["softmax", "sigmoid", "linear"]
THRESHOLD = 0.5  # a sigmoid output at or above it says the label is there
# The smallest float32 probability above 0: log-probabilities stay finite, and a softmax's
# second-highest probability still tells margins apart up to ~100 (see `Task.margins`).
TINY = float(np.finfo(np.float32).smallest_subnormal)


class Task(ABC):
    """What a model's outputs mean, how its answers are scored, and its chance level."""

    name: ClassVar[TaskName]
    metric: ClassVar[str]  # the primary metric, as the texts say it
    model_kind: ClassVar[str]  # what the model is, as the model card says it
    outputs_are: ClassVar[str]  # what its outputs stand for
    activation: Activation  # of the teacher's outputs: how they become answers

    @abstractmethod
    def answers(self, outputs: np.ndarray) -> np.ndarray:
        """Each sample's answer from a batch of model outputs."""

    @abstractmethod
    def margins(self, outputs: np.ndarray) -> np.ndarray:
        """How sure a model is of each answer: how far its logits are from changing it, in
        float64 (tasks/memory.py reads a teacher's memory from them).

        Gotcha: float32 probabilities saturate. A softmax's top one is exactly 1.0 once the gap
        passes ~17, common on memorised samples, so the top probability ties them all; the
        second one keeps resolving the gap up to ~87 (~103 where subnormals survive). A
        sigmoid's 1.0 ties every logit above ~17."""

    def logits(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs as logits, in float64: log-probabilities of a softmax, log-odds of a
        sigmoid."""
        outputs = outputs.astype(np.float64)
        if self.activation == "softmax":
            return np.log(np.maximum(outputs, TINY))
        if self.activation == "sigmoid":
            return np.log(np.maximum(outputs, TINY)) - np.log(np.maximum(1 - outputs, TINY))
        return outputs

    @abstractmethod
    def check_labels(self, labels: np.ndarray, outputs: int, key: str) -> None:
        """Refuse labels this task's model (with `outputs` outputs) cannot be judged on."""

    @abstractmethod
    def scores(self, answers: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The task's metrics, from scikit-learn: the primary (`accuracy`) and the others."""

    def right(self, answers: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per sample: the answer is right (every label of it, for a row)."""
        n = len(labels)
        return np.all(answers.reshape(n, -1) == labels.reshape(n, -1), axis=1)

    def chance(self, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """The most frequent answer among `labels` and its share: what always answering it
        scores."""
        values, counts = np.unique(labels, axis=0, return_counts=True)
        return values[counts.argmax()], float(counts.max() / len(labels))

    def __str__(self) -> str:
        return f"{self.name} ({self.activation} outputs, judged by {self.metric})"


@dataclass(frozen=True)
class Classification(Task):
    activation: Activation = "softmax"
    name: ClassVar[TaskName] = "classification"
    metric: ClassVar[str] = "accuracy"  # top-1
    model_kind: ClassVar[str] = "classifier"
    outputs_are: ClassVar[str] = "classes"

    def answers(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(axis=-1)

    def margins(self, outputs: np.ndarray) -> np.ndarray:
        """The gap between the two highest logits (of a softmax's log-probabilities: the
        same)."""
        top = np.partition(self.logits(outputs), -2, axis=-1)[:, -2:]
        return top[:, 1] - top[:, 0]

    def check_labels(self, labels: np.ndarray, outputs: int, key: str) -> None:
        if labels.ndim != 1:
            raise InputError(f"{key}: a classifier's labels are one class id per sample, got "
                             f"shape {labels.shape}; give class ids, or for several labels per "
                             "sample a model with sigmoid outputs (model.source: train builds a "
                             "softmax classifier)")
        if labels.max() >= outputs:
            raise InputError(f"{key}: labels go up to {labels.max()} but the model has {outputs} "
                             "outputs; labels must be class ids in [0, outputs)")

    def scores(self, answers: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score

        return {"accuracy": float(accuracy_score(labels, answers))}


@dataclass(frozen=True)
class MultiLabel(Task):
    activation: Activation = "sigmoid"
    name: ClassVar[TaskName] = "multilabel"
    metric: ClassVar[str] = "exact-match accuracy"
    model_kind: ClassVar[str] = "multi-label tagger"
    outputs_are: ClassVar[str] = "labels"

    @property
    def threshold(self) -> float:
        """The output at or above which a label is there: THRESHOLD of a sigmoid, its logit
        (0) for logits."""
        return THRESHOLD if self.activation == "sigmoid" else 0.0

    def answers(self, outputs: np.ndarray) -> np.ndarray:
        return (outputs >= self.threshold).astype(np.int64)

    def margins(self, outputs: np.ndarray) -> np.ndarray:
        """The least sure label's distance from the threshold: its |logit|."""
        return np.abs(self.logits(outputs)).reshape(len(outputs), -1).min(axis=1)

    def check_labels(self, labels: np.ndarray, outputs: int, key: str) -> None:
        width = labels.shape[1] if labels.ndim == 2 else 1
        if labels.ndim > 2 or width != outputs:
            raise InputError(f"{key}: a multi-label model with {outputs} outputs needs a row of "
                             f"{outputs} 0/1 labels per sample, got shape {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise InputError(f"{key}: multi-label labels are 0 or 1 (is the label there), got "
                             f"values from {labels.min()} to {labels.max()}")

    def scores(self, answers: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        rows, truth = answers.reshape(len(labels), -1), labels.reshape(len(labels), -1)
        return {"accuracy": float(accuracy_score(truth, rows)),
                "label_accuracy": float(np.mean(rows == truth)),
                "macro_f1": float(f1_score(truth, rows, average="macro", zero_division=0))}


TASKS: dict[str, type[Task]] = {task.name: task for task in (Classification, MultiLabel)}
SCORES = ("label_accuracy", "macro_f1")  # every task's scores beside `accuracy`


def task_named(name: str, activation: Activation) -> Task:
    """The task `name` (as the manifest stores it) for a model whose outputs are `activation`."""
    return TASKS[name](activation)


def check_label_values(y: np.ndarray, name: str) -> None:
    """What any task takes as labels, checked as the data is read (before the model is): class
    ids, or rows of 0/1 (multi-label), whole numbers from 0."""
    whole = np.issubdtype(y.dtype, np.integer) or y.dtype == bool or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))
    if y.ndim not in (1, 2) or not whole:
        raise InputError(f"data.source: {name} must hold a class id or a row of 0/1 labels per "
                         f"sample, got {y.dtype} of shape {y.shape}; regression targets are not "
                         "taken yet")
    if len(y) and y.min() < 0:
        raise InputError(
            f"data.source: label {y.min()} in {name} is out of range; class ids start at 0"
        )


def infer_task(wanted: str, activation: Activation, outputs: int, labels: np.ndarray) -> Task:
    """The task of a model whose last activation is `activation` with `outputs` outputs, judged
    on `labels` (model.task `wanted`, `auto` to infer it): softmax means classification and
    sigmoid multi-label; for logits, class ids mean classification and 0/1 rows (one per output,
    with more than one output) multi-label. The labels are checked against it."""
    if wanted == "auto":
        wanted = _inferred(activation, outputs, labels)
    if (wanted, activation) in {("classification", "sigmoid"), ("multilabel", "softmax")}:
        raise InputError(f"model.task: a model whose outputs are a {activation} cannot be judged "
                         f"as {wanted}; use model.task: auto")
    task = TASKS[wanted](activation)
    task.check_labels(labels, outputs, "data.source")
    return task


def _inferred(activation: Activation, outputs: int, labels: np.ndarray) -> TaskName:
    if activation == "softmax":
        return "classification"
    if activation == "sigmoid" or (labels.ndim == 2 and labels.shape[1] == outputs > 1):
        return "multilabel"
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        return "classification"
    raise InputError(
        f"model.task: cannot tell what the model's {outputs} {activation} outputs mean from "
        f"labels of shape {labels.shape} ({labels.dtype}): give class ids (classification) or a "
        "row of 0/1 per sample (multilabel); regression and segmentation are not taken yet, "
        "and a detector with its own box decoding is not either")
