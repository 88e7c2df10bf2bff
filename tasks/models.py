"""Keras (tf_keras, Keras 2) model helpers shared by the stages: build, read, write, train, inspect."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from google.protobuf.message import DecodeError

from tasks import progress
from tasks.artifacts import atomic_path
from tasks.config import Training
from tasks.errors import InputError
from tasks.flatten import flattened
from tasks.keras3 import read_keras3
from tasks.model_files import code_refused, refuse_code, stored_model
from tasks.progress import BatchListener, batch_listener, epoch_listener
from tasks.splits import Dataset
from tasks.task import Activation, Task

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
EPSILON = 1e-7  # keeps log(probability) finite for models that end in a softmax
# What reading a model file raises when the file is not one Keras can read: h5py and file errors
# (OSError), a wrong or unknown format or config (ValueError: stored_model's, Keras's, JSON's), a
# config the tf_keras classes do not take (TypeError: "Error when deserializing class 'Dense'"),
# a corrupt SavedModel's keras_metadata.pb (DecodeError).
UNREADABLE = (OSError, ValueError, TypeError, DecodeError)


def seed_everything(seed: int) -> None:
    """Make weight init, shuffling and dropout repeatable (CPU kernels are then deterministic)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The built-in teacher: a small VGG-style CNN that any image-shaped data set can train."""
    if len(input_shape) != 3:
        raise InputError(
            f"model.source: train builds a CNN for images of shape (height, width, channels), "
            f"but the samples have shape {input_shape}; bring a model file for other data"
        )
    layers = keras.layers
    blocks = [
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(256, activation="relu", name="fc1"),
        layers.Dropout(0.3, name="dropout"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ]
    return keras.Sequential([keras.Input(input_shape), *blocks], name="teacher_cnn")


def read_model(path: str | Path, key: str | None = None, trust_code: bool = False) -> keras.Model:
    """Load a .keras / .h5 file or SavedModel directory as a tf_keras model.

    `key` names the config entry the path came from (a user's file); without one, the path is a
    stage input the pipeline wrote itself from a model that already passed the checks below: it
    is loaded as it is, and an error reading it is raised as it is (no input of the user's to
    fix). A user's file is checked before anything is deserialised: Lambda layers and custom
    objects are refused unless `trust_code` (tf_keras runs an .h5 Lambda's code while loading;
    `safe_mode` covers .keras files only); one Keras cannot read (UNREADABLE) raises InputError,
    anything else (MemoryError, a bug) as it is. Keras 3 files are rebuilt in tf_keras (see
    tasks/keras3.py); `model_source(path)` tells the flow which Keras wrote a file and whether it
    was converted. A user's model that calls other models is flattened into one graph of layers
    (tasks/flatten.py): every stage after it sees the flat one.
    """
    path = Path(path).expanduser()
    who = key or "stage input"
    if not path.exists():
        fix = "give a .keras, .h5 or SavedModel path" if key else "run the stages before this one"
        raise InputError(f"{who}: {path} does not exist; {fix}")
    try:
        stored = stored_model(path)
        if key and not trust_code:
            refuse_code(stored, key)
        if stored.source.converted:
            model = read_keras3(stored.source, who, trust_code)
        else:
            model = keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except InputError:
        raise
    except UNREADABLE as exc:
        if not key:
            raise
        if "safe_mode" in str(exc):  # Keras's own safe mode caught code the check above missed
            raise code_refused(key, path, "a Python function that Keras's safe mode refuses") from exc
        raise InputError(
            f"{key}: cannot read {path} as a Keras model ({type(exc).__name__}: {exc}). "
            "Expected a .keras/.h5 file or SavedModel directory saved by Keras"
        ) from exc
    return flattened(model, who) if key else model


def write_model(model: keras.Model, path: Path) -> None:
    """Save as HDF5 without optimizer state (a third of the size), atomically.

    HDF5 rather than .keras: tf_keras's .keras format always stores the optimizer's slots.
    """
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        model.save(tmp, include_optimizer=False)


def output_activation(model: keras.Model) -> Activation:
    """What the model's last layer ends in: `softmax`, `sigmoid` (probabilities), else `linear`
    (logits or values)."""
    last = model.layers[-1]
    last = getattr(last, "layer", last)  # look inside wrappers such as prune_low_magnitude
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    name = getattr(getattr(last, "activation", None), "__name__", "")
    return name if name in ("softmax", "sigmoid") else "linear"


def as_logits(outputs: tf.Tensor, activation: Activation) -> tf.Tensor:
    """A model's outputs as logits: for a softmax, log-probabilities (equal up to a constant);
    for a sigmoid, log-odds."""
    if activation == "softmax":
        return tf.math.log(outputs + EPSILON)
    if activation == "sigmoid":
        return tf.math.log(outputs + EPSILON) - tf.math.log(1 - outputs + EPSILON)
    return outputs


def check_compatible(model: keras.Model, data: Dataset, key: str) -> None:
    """The model must take the data's samples (the labels' fit is the task's: tasks/task.py)."""
    expected = tuple(model.input_shape[1:])
    actual = data.input_shape
    if len(expected) != len(actual) or any(e not in (None, a) for e, a in zip(expected, actual)):
        raise InputError(
            f"{key}: the model takes inputs of shape {expected} but the data's samples have shape "
            f"{actual}; resize the data (data.image_size) or use a model built for it"
        )
    if model.inputs[0].dtype.is_integer and any(
            not np.array_equal(x, np.round(x)) for split in data.splits.values()
            for x in split.chunks()):
        raise InputError(
            f"{key}: the model takes integer inputs ({model.inputs[0].dtype.name}: token ids, e.g. "
            "into an Embedding) but the data's samples are not whole numbers; give the ids as "
            "integers (x_train, x_val, x_test in the npz) or use a model that takes floats"
        )


def compile_for_labels(model: keras.Model, task: Task, learning_rate: float) -> None:
    """Adam on the labels' loss for `task`: cross-entropy over classes (classification) or per
    label (multi-label), from the model's probabilities or logits."""
    from_logits = output_activation(model) == "linear"
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
            if task.name == "classification" else
            keras.losses.BinaryCrossentropy(from_logits=from_logits))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=[accuracy_metric(task)])


def accuracy_metric(task: Task, label_width: int | None = None):
    """The task's accuracy as a Keras metric named `accuracy` (a search's trials stop on its
    `val_accuracy`): a sample is right when its class is (classification) or every label is
    (multilabel). `label_width`: the labels are the first columns of `y_true` (distillation
    packs the teacher's logits after them)."""

    def accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels = y_true if label_width is None else y_true[:, :label_width]
        labels = tf.reshape(labels, [tf.shape(y_pred)[0], -1])  # a row per sample
        if task.name == "classification":
            answers = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
            return tf.cast(tf.equal(answers, tf.cast(labels[:, 0], tf.int32)), tf.float32)
        answers = tf.cast(tf.reshape(y_pred, tf.shape(labels)) >= task.threshold, labels.dtype)
        return tf.cast(tf.reduce_all(tf.equal(answers, labels), axis=-1), tf.float32)

    return accuracy


def fit(
    model: keras.Model,
    data: Dataset,
    cfg: Training,
    callbacks: list[keras.callbacks.Callback] = (),
    targets: tuple[np.ndarray, np.ndarray] | None = None,
    training: tf.data.Dataset | None = None,
    initial_epoch: int = 0,
) -> keras.callbacks.History:
    """Train on the training split (shuffled each epoch), validated on the validation split, up
    to `cfg.epochs` (from `initial_epoch`: a model compiled before goes on); `targets`: rows
    packed after each split's labels (distillation's teacher logits); `training`: the training
    batches instead (augmented views). A progress bar on a terminal, one line per epoch
    otherwise."""
    callbacks = list(callbacks)
    listener = epoch_listener.get()
    if listener is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: listener((epoch + 1) / cfg.epochs, logs or {})
        ))
    if batch_listener.get() is not None:
        callbacks.append(BatchProgress(batch_listener.get(), cfg))
    train_targets, val_targets = targets or (None, None)
    if training is None:
        training = data.train.batches(cfg.batch_size, shuffle=True, targets=train_targets)
    return model.fit(
        training,
        epochs=cfg.epochs,
        initial_epoch=initial_epoch,
        validation_data=data.val.batches(cfg.batch_size, targets=val_targets),
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )


class BatchProgress(keras.callbacks.Callback):
    """Tells a `BatchListener` the share of `fit` done and the training samples per second, at
    most every BATCH_SECONDS (read when training starts)."""

    def __init__(self, listener: BatchListener, cfg: Training):
        super().__init__()
        self.listener, self.cfg = listener, cfg

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = self.told = time.monotonic()
        self.every, self.samples, self.epoch = progress.BATCH_SECONDS, 0, 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.samples += self.cfg.batch_size  # the last batch may be smaller: a rate, not a count
        now = time.monotonic()
        if now - self.told >= self.every:
            self.told = now
            done = (self.epoch + (batch + 1) / self.params["steps"]) / self.cfg.epochs
            self.listener(done, self.samples / (now - self.start))


def kernels(model: keras.Model) -> dict[str, np.ndarray]:
    """The weight matrices pruning acts on, by layer name (biases and norms excluded)."""
    found = {}
    for layer in _flat_layers(model):
        for weight in layer.weights:
            short_name = weight.name.split("/")[-1].split(":")[0]  # "conv/kernel:0" -> "kernel"
            if short_name in KERNEL_NAMES:
                found[f"{layer.name}/{short_name}"] = weight.numpy()
    return found


def layer_sparsity(model: keras.Model) -> dict[str, float]:
    """Fraction of exact zeros in each kernel."""
    return {name: float(np.mean(w == 0)) for name, w in kernels(model).items()}


def overall_sparsity(model: keras.Model) -> float:
    """Fraction of exact zeros over all kernels together."""
    weights = list(kernels(model).values())
    total = sum(w.size for w in weights)
    return float(sum(int(np.sum(w == 0)) for w in weights) / total) if total else 0.0


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers
