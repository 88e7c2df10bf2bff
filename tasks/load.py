"""Load stage: the data set and the teacher (read from a file, or built and trained here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tf_keras as keras
from scipy.optimize import linear_sum_assignment

from tasks.artifacts import Workspace
from tasks.chance import Chance
from tasks.config import DataConfig, ModelConfig
from tasks.data import PIXEL_DIVISOR, load_data, validation_from_test
from tasks.errors import InputError
from tasks.inputs import APPLICATIONS_PREFIX, load_inputs, read_steadily
from tasks.memory import AccuracyGap, Memory, confidence_gap
from tasks.models import (
    build_cnn,
    check_compatible,
    compile_for_labels,
    fit,
    output_activation,
    read_model,
    seed_everything,
    write_model,
)
from tasks.sources import class_folders
from tasks.splits import BATCH, Dataset, Rows
from tasks.task import Classification, infer_task

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
PIXEL_SCALE = 1 / 100  # a first Rescaling below this expects pixels 0-255 (EfficientNet: 1/255)
# A teacher that never saw the validation split looks like one that remembers it once in a hundred
# runs by chance (tasks/memory.py): the split moves, which costs test samples, never correctness.
MEMORY_CONFIDENCE = 0.99
TEACHER_CONFIDENCE = 0.99  # a teacher at chance stops the run: be sure (tasks/chance.py)


@dataclass(frozen=True)
class Inputs:
    """The checked data set and the teacher, trained or still to be trained."""

    data: Dataset
    teacher: keras.Model
    needs_training: bool


def open_inputs(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> Inputs:
    """Read and check data and teacher without training anything: cheap, so run it first.

    A teacher that rescales 0-255 pixels itself (`pixel_scale`: keras.applications'
    EfficientNet and MobileNetV3, or a model with its own `Rescaling(1/255)`) is fed its uint8
    pixels unscaled, as its own layers say, whatever data.scale_uint8 says: scaled to [0, 1]
    it would see nearly black images."""
    data = load_data(data_cfg, seed)
    teacher, needs_training = _teacher(model_cfg, data)
    scale = pixel_scale(teacher)
    if scale and data_cfg.scale_uint8 and data.train.source.divisor == PIXEL_DIVISOR:
        log.info("model.source: the teacher rescales its inputs by %.4g itself, so its uint8 "
                 "pixels reach it unscaled, 0 to 255 (data.scale_uint8 does not apply)", scale)
        data = load_data(data_cfg.model_copy(update={"scale_uint8": False}), seed)
    check_compatible(teacher, data, "model.source")
    task = infer_task(model_cfg.task, output_activation(teacher), teacher.output_shape[-1],
                      data.train.labels)
    log.info("model.task: %s", task)
    return Inputs(replace(data, task=task), teacher, needs_training)


def pixel_scale(teacher: keras.Model) -> float | None:
    """The scale of the teacher's first layer when it is a Rescaling that expects pixels from 0 to
    255 (a scale below PIXEL_SCALE); else None."""
    first = next((layer for layer in teacher.layers
                  if not isinstance(layer, keras.layers.InputLayer)), None)
    if isinstance(first, keras.layers.Rescaling) and np.max(first.scale) < PIXEL_SCALE:
        return float(np.max(first.scale))
    return None


def warn_if_scaled_twice(teacher: keras.Model, data: Dataset) -> None:
    """The pre-check's warning for a teacher that scales 0-255 pixels itself fed float data
    already in [0, 1] (uint8 pixels it gets unscaled: `open_inputs`): it would see nearly black
    images, and train or score poorly."""
    scale = pixel_scale(teacher)
    if scale and data.train.read(slice(BATCH)).max() <= 1.0:
        log.warning("model.source: the teacher rescales its inputs by %.4g itself, so it expects "
                    "pixels from 0 to 255, but the data reach it in [0, 1]; give it unscaled "
                    "pixels (uint8, or floats from 0 to 255)", scale)


def check_beats_chance(teacher: keras.Model, data: Dataset, data_cfg: DataConfig) -> None:
    """A trained teacher must beat chance beyond noise on the test split (tasks/chance.py, at
    TEACHER_CONFIDENCE), else InputError with the evidence: the range its inputs reach it in
    (against its own Rescaling's), and the class order its answers fit, when that is another
    (image folders number their classes in sorted name order)."""
    predicted = data.task.answers(teacher.predict(data.test.batches(BATCH), verbose=0))
    labels, n = data.test.labels, len(data.test)
    right = int(np.sum(data.task.right(predicted, labels)))
    chance = Chance.of(data.task, labels)
    if chance.beaten(right, n, TEACHER_CONFIDENCE):
        return
    sample = data.test.read(slice(BATCH))
    evidence = [f"Its inputs reach it in [{sample.min():.4g}, {sample.max():.4g}]"
                + (f", and its first layer rescales them by {scale:.4g}: it expects pixels from "
                   "0 to 255" if (scale := pixel_scale(teacher)) else "")]
    if data.task.name == "classification":
        evidence += _class_order(predicted, labels, data_cfg)
    raise InputError(f"model.source: the teacher scores {chance.describe(right, n)}; compressing "
                     f"it would copy noise. {'; '.join(evidence)}. Give it its inputs as it was "
                     "trained on them (scale, class order), or check model.source and data.source")


def _class_order(predicted: np.ndarray, labels: np.ndarray, data_cfg: DataConfig) -> list[str]:
    """The class order the teacher's answers fit, when it is another than the labels' under which
    it would beat chance: the one-to-one relabelling that matches most of its answers (the
    assignment problem on the confusion counts), and what to do about it."""
    classes = int(labels.max()) + 1
    confusion = np.zeros((classes, max(classes, int(predicted.max()) + 1)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    _, answer = linear_sum_assignment(confusion, maximize=True)  # one class for each label
    fitted = int(confusion[np.arange(classes), answer].sum())
    if not Chance.of(Classification(), labels).beaten(fitted, len(labels), TEACHER_CONFIDENCE):
        return []  # no order under which the teacher would beat chance (not the labels' own)
    kind, _, location = data_cfg.source.partition(":")
    names = ([folder.name for folder in class_folders(Path(location).expanduser())]
             if kind == "images" else [str(label) for label in range(classes)])
    mapping = ", ".join(f"{names[label]} -> {answer[label]}" for label in range(classes)
                        if answer[label] != label)
    return [f"its answers fit the labels in another class order ({fitted:,} of {len(labels):,} "
            f"test samples): label -> teacher class {mapping}; the data numbers its classes "
            f"{', '.join(names)} from 0, so relabel it in the teacher's order"]


def train_teacher(teacher: keras.Model, data: Dataset, cfg: ModelConfig) -> keras.Model:
    compile_for_labels(teacher, data.task, cfg.learning_rate)
    fit(teacher, data, cfg)
    return teacher


def _teacher(cfg: ModelConfig, data: Dataset) -> tuple[keras.Model, bool]:
    if cfg.source == "train":
        return build_cnn(data.input_shape, data.num_classes), True
    if cfg.source.startswith(APPLICATIONS_PREFIX):
        return _application(cfg, data)
    return read_model(cfg.source, "model.source", cfg.trust_code), False


def _application(cfg: ModelConfig, data: Dataset) -> tuple[keras.Model, bool]:
    """A keras.applications architecture, with local weights or trained here; never downloaded."""
    name = cfg.source.removeprefix(APPLICATIONS_PREFIX)
    builder = getattr(keras.applications, name, None)
    if not callable(builder):
        known = sorted(n for n in dir(keras.applications) if n[0].isupper())
        raise InputError(f"model.source: unknown keras.applications model {name!r}; known: {known}")
    weights = cfg.weights
    if weights is not None and not Path(weights).expanduser().is_file():
        raise InputError(
            f"model.weights: {weights!r} is not a local file. Pretrained weights are never "
            "downloaded: give a weights file (.h5) or leave model.weights empty to train here"
        )
    try:
        model = builder(weights=None, input_shape=data.input_shape, classes=data.num_classes)
    except ValueError as exc:
        raise InputError(f"model.source: {name} cannot take this data: {exc}") from exc
    if weights is None:
        return model, True
    try:
        model.load_weights(Path(weights).expanduser())
    except Exception as exc:  # shape mismatches and unreadable files alike
        raise InputError(f"model.weights: cannot load {weights} into {name} ({exc})") from exc
    return model, False


def run_load(seed: int, data_cfg: DataConfig, model_cfg: ModelConfig, ws: Workspace) -> dict[str, float]:
    """Stage: write the splits' manifest (with the teacher's errors on the held-out splits and
    the unlabeled pool's parts) and the trained teacher. The validation split moves to held-out
    samples when data.val_from says so (`place_validation`)."""
    seed_everything(seed)
    with read_steadily(load_inputs(data_cfg, model_cfg)):
        inputs = open_inputs(data_cfg, model_cfg, seed)
    teacher, data = inputs.teacher, inputs.data
    if data_cfg.val_from == "test":
        data = validation_from_test(data, seed)
    if inputs.needs_training:
        teacher = train_teacher(teacher, data, model_cfg)
    check_beats_chance(teacher, data, data_cfg)
    data = replace(data, teacher_errors=teacher_errors(teacher, data))
    if data_cfg.val_from == "auto" and not inputs.needs_training:
        data = place_validation(teacher, data, seed)
    data.save(ws.data)
    write_model(teacher, ws.teacher)
    pool = data.pool.parts if data.pool else {}
    return {
        "train_samples": len(data.train),
        "val_samples": len(data.val),
        "test_samples": len(data.test),
        **{f"unlabeled_{name}_samples": len(part) for name, part in pool.items()},
        "num_classes": data.num_classes,
        "teacher_params": teacher.count_params(),
        **{f"teacher.{name}_accuracy": 1 - errors / len(data.splits[name])
           for name, errors in data.teacher_errors.items()},
    }


def teacher_errors(teacher: keras.Model, data: Dataset) -> dict[str, int]:
    """How many samples of the validation and test splits the teacher gets wrong."""
    return {name: int(np.sum(~data.task.right(
                data.task.answers(teacher.predict(split.batches(BATCH), verbose=0)),
                split.labels)))
            for name, split in (("val", data.val), ("test", data.test))}


def memorized(teacher: keras.Model, data: Dataset) -> str | None:
    """Why the teacher looks trained on the validation split: more accurate there than on the test
    split, or with fewer of its least sure answers there than on the inputs it never saw (the
    test split's and the unlabeled pool's), beyond noise (tasks/memory.py `Memory`, at
    MEMORY_CONFIDENCE); None if not. Reads the teacher's answers on every held-out input once
    (the pool's too)."""
    held_out = [data.test, *(data.pool.parts.values() if data.pool else ())]
    unseen = np.concatenate([_margins(teacher, data, rows) for rows in held_out if len(rows)])
    right = {name: len(split) - data.teacher_errors[name]
             for name, split in (("val", data.val), ("test", data.test))}
    memory = Memory(AccuracyGap(right["val"], len(data.val), right["test"], len(data.test)),
                    confidence_gap(_margins(teacher, data, data.val), unseen,
                                   unlabeled=len(unseen) - len(data.test)))
    if not memory.remembered(MEMORY_CONFIDENCE):
        return None
    return f"{memory.describe()}: it was trained on them"


def _margins(teacher: keras.Model, data: Dataset, inputs: Rows) -> np.ndarray:
    """How sure the teacher is of its answer to each of `inputs`, as `data.task` reads its
    outputs (tasks/task.py `Task.margins`)."""
    return data.task.margins(inputs.outputs(teacher.predict_on_batch))


def place_validation(teacher: keras.Model, data: Dataset, seed: int) -> Dataset:
    """data.val_from `auto`: a validation split the teacher remembers (`memorized`) is carved from
    the test split instead, said with the evidence, what it costs the test split and which
    samples choose the student then. A validation split given as its own arrays (x_val) is
    kept, with the warning."""
    reason = memorized(teacher, data)
    if reason is None:
        return data
    if data.val.source is not data.train.source:
        log.warning("data.val_from auto: %s; x_val is kept as given, so students are chosen on "
                    "samples the teacher remembers, where each looks worse than it is%s; give "
                    "held-out samples as x_val, or leave it out to validate on part of the test "
                    "split", reason, _choose_part(data, ", and on %s, which it never saw"))
        return data
    moved = validation_from_test(data, seed)
    log.warning("data.val_from auto: %s. Validating on %s of the test split's samples instead "
                "(the test split keeps %s; the old validation samples train): students are "
                "chosen on them%s, all unseen by the teacher; set data.val_from: train to keep it",
                reason, f"{len(moved.val):,}", f"{len(moved.test):,}",
                _choose_part(data, " and on %s"))
    return replace(moved, teacher_errors=teacher_errors(teacher, moved))


def _choose_part(data: Dataset, said: str) -> str:
    """`said` with the unlabeled pool's choose part named (the search and distill.width auto
    choose on it too); empty without a pool."""
    if data.pool is None:
        return ""
    return said % f"the {len(data.pool.choose):,} inputs of the unlabeled pool's choose part"
