"""Distillation: the student's shape, the loss, and a sparse student that learns."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tasks.config import DistillConfig, SparsifyConfig
from tasks.distill import DistillationLoss, derive_student, distill
from tasks.errors import InputError
from tasks.models import overall_sparsity


def test_derived_student_is_narrower_everywhere_but_the_output(tiny_cnn):
    student = derive_student(tiny_cnn, width=0.5)
    widths = {layer.name: layer.get_config().get("filters") or layer.get_config().get("units")
              for layer in student.layers}
    assert widths == {"conv": 4, "flatten": None, "dense": 16, "out": 10}
    assert student.input_shape == tiny_cnn.input_shape


def test_loss_is_cross_entropy_at_alpha_one_and_kl_at_alpha_zero():
    labels = np.array([[0.0], [2.0]])
    teacher_logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.3, 1.5]])
    y_true = tf.constant(np.concatenate([labels, teacher_logits], axis=1), tf.float32)
    student_logits = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    hard = DistillationLoss(temperature=2.0, alpha=1.0, student_probabilities=False)
    expected_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels[:, 0], student_logits
    )
    assert float(hard(y_true, student_logits)) == pytest.approx(float(expected_ce), rel=1e-5)
    soft = DistillationLoss(temperature=2.0, alpha=0.0, student_probabilities=False)
    assert float(soft(y_true, student_logits)) > 0
    matched = tf.constant(teacher_logits, tf.float32)  # a student equal to the teacher
    assert float(soft(y_true, matched)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_student_learns_and_is_as_sparse_as_the_target(digits, trained_cnn):
    student = derive_student(trained_cnn, width=0.5)
    cfg = DistillConfig(epochs=4, learning_rate=3e-3)
    result = distill(trained_cnn, student, digits, cfg, SparsifyConfig(final_sparsity=0.7))
    assert overall_sparsity(result) == pytest.approx(0.7, abs=0.01)
    predicted = result.predict(digits.x_val, verbose=0).argmax(axis=1)
    assert (predicted == digits.y_val).mean() > 0.3  # chance is 0.1


def test_student_with_other_classes_is_refused(digits, trained_cnn):
    other = keras.Sequential([keras.Input(digits.input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(InputError, match="3 outputs, the teacher 10"):
        distill(trained_cnn, other, digits, DistillConfig(epochs=1), SparsifyConfig())
