"""data.val_from: a validation split the teacher was trained on is detected before any training,
and validation moves to samples it never saw."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from tasks.artifacts import Workspace
from tasks.config import DataConfig, ModelConfig
from tasks.load import run_load
from tasks.splits import Dataset

CLASSES = 4


@pytest.fixture(scope="module")
def memorised(tmp_path_factory) -> tuple[Path, Path]:
    """Noise whose label is its largest of the first CLASSES features, a third of the labels
    then drawn at random (something to learn, more to remember), and a teacher that remembers
    every x_train sample: right on all of them, far less often on x_test (above chance)."""
    root = tmp_path_factory.mktemp("memorised")
    rng = np.random.default_rng(0)
    x_train, x_test = (rng.normal(size=(n, 16)).astype(np.float32) for n in (240, 240))
    y_train, y_test = (np.where(rng.random(len(x)) < 2 / 3, x[:, :CLASSES].argmax(axis=1),
                                rng.integers(0, CLASSES, len(x))) for x in (x_train, x_test))
    np.savez(root / "noise.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((16,)), keras.layers.Dense(256, activation="relu"),
                                keras.layers.Dense(CLASSES, activation="softmax")])
    teacher.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    teacher.fit(x_train, y_train, epochs=150, batch_size=240, verbose=0)
    assert teacher.evaluate(x_train, y_train, verbose=0)[1] == 1.0
    teacher.save(root / "teacher.h5")
    return root / "noise.npz", root / "teacher.h5"


def load(memorised: tuple[Path, Path], tmp_path: Path, val_from: str) -> Dataset:
    data, teacher = memorised
    ws = Workspace(tmp_path)
    run_load(0, DataConfig(source=f"npz:{data}", val_from=val_from),
             ModelConfig(source=str(teacher)), ws)
    return Dataset.load(ws.data)


def test_a_teacher_that_remembers_the_validation_split_moves_it_to_held_out_samples(
        memorised, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.load"):
        data = load(memorised, tmp_path, "auto")
    (warning,) = [r.getMessage() for r in caplog.records if "data.val_from auto" in r.getMessage()]
    assert "the teacher scores 100.00 % on the 72 validation samples" in warning
    assert "it was trained on them" in warning and "the test split keeps 168" in warning
    assert data.val.source.array == "x_test" and data.test.source.array == "x_test"
    assert not set(data.val.rows) & set(data.test.rows)  # carved from the test split
    assert (len(data.train), len(data.val), len(data.test)) == (240, 72, 168)
    assert data.teacher_errors["val"] > 12  # far from 100 % now: samples it never saw


def test_val_from_train_keeps_the_validation_split_where_it_was(memorised, tmp_path):
    data = load(memorised, tmp_path, "train")
    assert data.val.source.array == "x_train" and data.teacher_errors["val"] == 0
    assert (len(data.train), len(data.val), len(data.test)) == (168, 72, 240)
