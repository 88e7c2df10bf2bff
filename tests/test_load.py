"""The load stage's checks of a trained teacher before any training: it is fed its inputs as its
own layers say (uint8 pixels unscaled for a teacher that rescales them itself), and it must beat
chance on the test split, else the run stops with the evidence (input range, class order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from tasks.chance import Chance
from tasks.config import DataConfig, ModelConfig
from tasks.errors import InputError
from tasks.load import check_beats_chance, open_inputs, train_teacher
from tasks.models import write_model
from tasks.splits import Dataset, Split
from tasks.task import Classification


@pytest.fixture(scope="module")
def pixels_npz(tmp_path_factory, digits: Dataset) -> Path:
    """The digits slice as uint8 pixels 0-255 (`npz:` x, y)."""
    path = tmp_path_factory.mktemp("pixels") / "pixels.npz"
    np.savez(path, x=np.round(255 * digits.train.read()).astype(np.uint8), y=digits.train.labels)
    return path


def linear_teacher(path: Path, scale: float) -> Path:
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(scale),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    write_model(model, path)
    return path


@pytest.mark.parametrize("scale, largest", [(1 / 255, 255.0), (1.0, 1.0)])
def test_a_teacher_that_rescales_pixels_itself_gets_them_unscaled(pixels_npz, tmp_path, scale,
                                                                  largest):
    teacher = linear_teacher(tmp_path / "teacher.h5", scale)
    inputs = open_inputs(DataConfig(source=f"npz:{pixels_npz}"), ModelConfig(source=str(teacher)),
                         seed=0)
    assert inputs.data.train.read().max() == largest


def permuted(model: keras.Model, order: np.ndarray) -> keras.Model:
    """`model` answering class order[c] where it answered c: its output units reordered."""
    out = model.layers[-1]
    kernel, bias = out.get_weights()
    moved = np.empty_like(kernel), np.empty_like(bias)
    moved[0][:, order], moved[1][order] = kernel, bias
    out.set_weights(list(moved))
    return model


def test_a_teacher_trained_in_another_class_order_is_refused_with_the_order(trained_cnn, digits):
    order = np.roll(np.arange(10), 1)  # the teacher's class c + 1 is now its class c
    with pytest.raises(InputError) as refused:
        check_beats_chance(permuted(trained_cnn, order), digits, DataConfig())
    message = str(refused.value)
    assert "model.source: the teacher scores" in message and "no better beyond noise" in message
    assert "its answers fit the labels in another class order" in message
    assert "label -> teacher class 0 -> 9" in message and "3 -> 2, 4 -> 3, 5 -> 4" in message


def test_a_teacher_fed_scaled_pixels_is_refused_with_the_range_it_expects(digits):
    """A teacher that learned on 0-255 pixels, fed [0, 1]: its answers are all one class."""
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                                keras.layers.Flatten(), keras.layers.Dense(10)])
    pixels = Dataset(*(Split.of(255 * split.read(), split.labels)
                       for split in (digits.train, digits.val, digits.test)))
    train_teacher(teacher, pixels, ModelConfig(epochs=30))
    with pytest.raises(InputError, match=r"Its inputs reach it in \[0, 1\], and its first layer "
                                         r"rescales them by 0.003922: it expects pixels from 0"):
        check_beats_chance(teacher, digits, DataConfig())


def test_a_teacher_above_chance_passes(trained_cnn, digits):
    check_beats_chance(trained_cnn, digits, DataConfig())

@pytest.mark.parametrize("right, beaten", [(30, False), (40, False), (50, True)])
def test_chance_is_beaten_only_beyond_noise(right, beaten):
    """300 samples, the most frequent class a tenth of them: 30 is chance, 40 is within noise
    (binomial tail 0.04 > 0.01), 50 is not (5e-5)."""
    chance = Chance.of(Classification(), np.repeat(np.arange(10), 30))
    assert (chance.answer, chance.rate) == (0, 0.1)
    assert chance.beaten(right, 300, confidence=0.99) is beaten
