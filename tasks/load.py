"""Load stage: the data set and the teacher (read from a file, or built and trained here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tf_keras as keras
from prefect import task

from tasks.artifacts import Workspace
from tasks.config import DataConfig, ModelConfig
from tasks.data import load_data
from tasks.errors import InputError
from tasks.inputs import APPLICATIONS_PREFIX, load_inputs, read_steadily
from tasks.models import (
    build_cnn,
    check_compatible,
    compile_classifier,
    fit,
    read_model,
    seed_everything,
    write_model,
)
from tasks.splits import BATCH, Dataset

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
PIXEL_SCALE = 1 / 100  # a first Rescaling below this expects pixels 0-255 (EfficientNet: 1/255)


@dataclass(frozen=True)
class Inputs:
    """The checked data set and the teacher, trained or still to be trained."""

    data: Dataset
    teacher: keras.Model
    needs_training: bool


def open_inputs(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> Inputs:
    """Read and check data and teacher without training anything: cheap, so run it first."""
    data = load_data(data_cfg, seed)
    teacher, needs_training = _teacher(model_cfg, data)
    check_compatible(teacher, data, "model.source")
    return Inputs(data, teacher, needs_training)


def warn_if_scaled_twice(teacher: keras.Model, data: Dataset) -> None:
    """The pre-check's warning for a teacher that scales 0-255 pixels itself (a Rescaling first,
    as keras.applications' EfficientNet and MobileNetV3) fed data already in [0, 1] (uint8 pixels
    scaled by data.scale_uint8): it would see nearly black images, and train or score poorly."""
    first = next((layer for layer in teacher.layers
                  if not isinstance(layer, keras.layers.InputLayer)), None)
    if (isinstance(first, keras.layers.Rescaling) and np.max(first.scale) < PIXEL_SCALE
            and data.train.read(slice(BATCH)).max() <= 1.0):
        log.warning("model.source: the teacher rescales its inputs by %.4g itself, so it expects "
                    "pixels from 0 to 255, but the data reach it in [0, 1]; set "
                    "data.scale_uint8: false (uint8 data) or give it unscaled pixels",
                    np.max(first.scale))


def train_teacher(teacher: keras.Model, data: Dataset, cfg: ModelConfig) -> keras.Model:
    compile_classifier(teacher, cfg.learning_rate)
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
    """Stage: write the splits' manifest (with the unlabeled pool's parts) and the trained
    teacher."""
    seed_everything(seed)
    with read_steadily(load_inputs(data_cfg, model_cfg)):
        inputs = open_inputs(data_cfg, model_cfg, seed)
    teacher = inputs.teacher
    if inputs.needs_training:
        teacher = train_teacher(teacher, inputs.data, model_cfg)
    inputs.data.save(ws.data)
    write_model(teacher, ws.teacher)
    pool = inputs.data.pool.parts if inputs.data.pool else {}
    return {
        "train_samples": len(inputs.data.train),
        "val_samples": len(inputs.data.val),
        "test_samples": len(inputs.data.test),
        **{f"unlabeled_{name}_samples": len(part) for name, part in pool.items()},
        "num_classes": inputs.data.num_classes,
        "teacher_params": teacher.count_params(),
    }


load_task = task(run_load, name="load")
