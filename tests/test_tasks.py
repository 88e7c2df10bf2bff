"""The task (tasks/task.py): inferred from the teacher's outputs and the labels and said before any
training, its labels checked, its loss and metrics; a multi-label tagger through the whole flow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from prefect.artifacts import Artifact

from flows.stages import check_inputs
from tasks.errors import InputError
from tasks.models import accuracy_metric, seed_everything, write_model
from tasks.task import Classification, MultiLabel, infer_task
from tasks.teaching import DistillationLoss
from tasks.tflite import TFLiteClassifier

FEATURES, LABELS = 12, 4
IDS, ROWS = np.array([0, 2, 1, 2]), np.array([[0, 1], [1, 1], [0, 0], [1, 0]])


@pytest.mark.parametrize("activation, outputs, labels, task", [
    ("softmax", 3, IDS, "classification"),
    ("linear", 3, IDS, "classification"),  # logits
    ("sigmoid", 2, ROWS, "multilabel"),
    ("linear", 2, ROWS, "multilabel"),  # logits, a row of labels per sample
    ("sigmoid", 1, np.array([0, 1, 1, 0]), "multilabel"),  # binary: one sigmoid output
])
def test_the_task_is_inferred_from_the_outputs_and_the_labels(activation, outputs, labels, task):
    assert infer_task("auto", activation, outputs, labels).name == task


@pytest.mark.parametrize("wanted, activation, outputs, labels, message", [
    ("auto", "linear", 1, np.array([0.3, 1.7, 2.2]), r"cannot tell what the model's 1 linear "
     r"outputs mean.*regression and segmentation are not taken yet"),
    ("auto", "sigmoid", 3, IDS, r"a row of 3 0/1 labels per sample, got shape \(4,\)"),
    ("auto", "softmax", 2, ROWS, r"one class id per sample, got shape \(4, 2\)"),
    ("auto", "softmax", 2, IDS, r"labels go up to 2 but the model has 2 outputs"),
    ("auto", "sigmoid", 2, ROWS * 2, r"multi-label labels are 0 or 1"),
    ("classification", "sigmoid", 2, ROWS, r"sigmoid cannot be judged as classification"),
])
def test_labels_the_model_cannot_be_judged_on_are_refused_with_the_fix(wanted, activation,
                                                                     outputs, labels, message):
    with pytest.raises(InputError, match=message):
        infer_task(wanted, activation, outputs, labels)


def test_multilabel_answers_and_scores_count_a_sample_right_only_when_every_label_is():
    task = MultiLabel("sigmoid")
    answers = task.answers(np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.3, 0.1]]))
    np.testing.assert_array_equal(answers, [[1, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(task.right(answers, ROWS), [False, True, True, False])
    scores = task.scores(answers, ROWS)
    assert scores["accuracy"] == 0.5 and scores["label_accuracy"] == 5 / 8
    assert scores["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # F1 of each label, averaged
    assert MultiLabel("linear").answers(np.array([[-0.1, 0.0]])).tolist() == [[0, 1]]  # logits
    np.testing.assert_array_equal(Classification().right(np.array([0, 1, 1, 2]), IDS),
                                  [True, False, True, True])


def test_the_multilabel_loss_is_binary_cross_entropy_on_labels_and_softened_teacher():
    labels = np.array([[1.0, 0.0], [0.0, 1.0]])
    teacher_logits = np.array([[2.0, -1.0], [-0.5, 1.5]])
    y_true = tf.constant(np.concatenate([labels, teacher_logits], axis=1), tf.float32)
    student_logits = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    hard = DistillationLoss("multilabel", 2.0, alpha=1.0, activation="linear", label_width=2)
    expected = keras.losses.BinaryCrossentropy(from_logits=True)(labels, student_logits)
    assert float(hard(y_true, student_logits)) == pytest.approx(float(expected), rel=1e-5)
    soft = DistillationLoss("multilabel", 2.0, alpha=0.0, activation="linear", label_width=2)
    matched = tf.constant(teacher_logits, tf.float32)  # the student's best: the teacher
    assert float(soft(y_true, matched)) < float(soft(y_true, student_logits))
    probabilities = DistillationLoss("multilabel", 2.0, alpha=1.0, activation="sigmoid",
                                     label_width=2)
    assert float(probabilities(y_true, tf.sigmoid(student_logits))) == pytest.approx(
        float(expected), rel=1e-4)


@pytest.mark.parametrize("labels, outputs, packed, right", [
    ([0, 1, 1], [[0.2], [0.9], [0.4]], None, [1, 1, 0]),  # binary: one sigmoid, 0/1 per sample
    ([[1, 0], [0, 1]], [[0.7, 0.6], [0.1, 0.8]], None, [0, 1]),
    ([[1, 0, 3.0, -2.0]], [[0.7, 0.2]], 2, [1]),  # labels packed before the teacher's logits
])
def test_the_keras_accuracy_of_a_multilabel_model_is_exact_match(labels, outputs, packed, right):
    accuracy = accuracy_metric(MultiLabel(), packed)(tf.constant(labels, tf.float32),
                                                     tf.constant(outputs, tf.float32))
    np.testing.assert_array_equal(accuracy.numpy(), right)


@pytest.fixture(scope="module")
def tagger_files(tmp_path_factory) -> tuple[Path, Path]:
    """A trained multi-label tagger (12 features, 4 sigmoid outputs; label j: the sign of a fixed
    linear rule of the features) as a .h5 file, and its data as an npz source."""
    root = tmp_path_factory.mktemp("tagger")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=(FEATURES, LABELS)) > 0).astype(np.int64)
    np.savez(root / "tags.npz", x=x, y=y)
    seed_everything(0)
    teacher = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"),
                                keras.layers.Dense(LABELS, activation="sigmoid")])
    teacher.compile("adam", "binary_crossentropy")
    teacher.fit(x, y, epochs=60, verbose=0)
    write_model(teacher, root / "teacher.h5")
    return root / "tags.npz", root / "teacher.h5"


def test_the_task_is_said_before_any_training(tagger_files, tiny_params, caplog):
    data, teacher = tagger_files
    with caplog.at_level(logging.INFO, logger="tasks"):
        check_inputs(tiny_params(f"data.source=npz:{data}", f"model.source={teacher}"))
    assert ("model.task: multilabel (sigmoid outputs, judged by exact-match accuracy)"
            in caplog.text)


def test_a_multilabel_tagger_goes_through_the_whole_flow(tagger_files, prefect_server,
                                                        dvc_project, tiny_params):
    from flows.compress import compress
    from flows.stages import STAGES

    data, teacher = tagger_files
    params = tiny_params(f"data.source=npz:{data}", f"model.source={teacher}",
                         "distill.width=0.5")
    report = compress(params, workdir=str(dvc_project))
    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    metrics = json.loads((dvc_project / "metrics" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    teacher_scores = metrics["candidates"]["teacher"]
    assert teacher_scores["accuracy"] > 0.5  # exact match of 4 labels: chance is far lower
    assert teacher_scores["label_accuracy"] > teacher_scores["accuracy"]
    assert 0 < metrics["final"]["macro_f1"] <= 1
    final = TFLiteClassifier((dvc_project / "artifacts" / "model.tflite").read_bytes())
    assert final.input["dtype"] == np.int8 and final.predict(np.zeros((2, FEATURES))).shape == (2, 4)
    card = Artifact.get("model-card").data  # written for the candidate, promoted or not
    assert "A TFLite multi-label tagger (int8) of 4 labels" in card
    assert "judged by exact-match accuracy" in card
