"""Bringing a model file: Keras 3 files are rebuilt in tf_keras with the same outputs, and code
stored in a model file (Lambda layers) runs only when `model.trust_code` allows it."""

import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
import tf_keras as keras

from tasks.artifacts import Workspace
from tasks.config import DataConfig, ModelConfig
from tasks.errors import InputError
from tasks.load import run_load, warn_if_scaled_twice
from tasks.model_files import ModelSource, model_source
from tasks.models import read_model, write_model
from tasks.splits import Split

# Run by a Python without TF_USE_LEGACY_KERAS, so `keras` is Keras 3: writes NAME.keras and
# NAME.npz (a batch x and the Keras 3 model's outputs y) for each model into argv[1].
KERAS3_MODELS = """
import sys
import numpy as np
import keras
from keras import layers
from sklearn.datasets import load_digits

out, side_effect = sys.argv[1], eval(sys.argv[2])
rng = np.random.default_rng(0)


digits = load_digits()
digits_x, digits_y = (digits.images / 16).reshape(-1, 8, 8, 1).astype("float32"), digits.target


def save(name, model, trained=True):
    for weight in model.weights:  # random, so that a weight copied wrong shows in the outputs
        value = rng.uniform(-0.5, 0.5, weight.shape)
        weight.assign(np.abs(value) + 0.5 if "variance" in weight.path else value)
    if trained:  # above chance: a teacher at chance is refused (tasks/load.py)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(digits_x, digits_y, epochs=5, verbose=0)
    model.save(f"{out}/{name}.keras")
    x = rng.random((16, 8, 8, 1)).astype("float32")
    np.savez(f"{out}/{name}.npz", x=x, y=model.predict(x, verbose=0))


save("sequential", keras.Sequential([
    keras.Input((8, 8, 1)),
    layers.Conv2D(4, 3, padding="same", activation="relu"),
    layers.MaxPooling2D(2),
    layers.AveragePooling2D(2),
    layers.Flatten(),
    layers.Dense(16),
    layers.Activation("tanh"),
    layers.Dropout(0.2),
    layers.Dense(10),
    layers.Softmax(),
]))

x = inputs = keras.Input((8, 8, 1))
x = layers.Rescaling(2.0, offset=-1.0)(x)
x = layers.Conv2D(8, 3, padding="same")(x)
y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same", use_bias=False)(x)))
x = layers.Add()([x, y])
x = layers.Concatenate()([
    layers.DepthwiseConv2D(3, padding="same")(x),
    layers.SeparableConv2D(8, 3, padding="same", activation="relu")(x),
])
x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(x))
save("residual", keras.Model(inputs, layers.Dense(10, activation="softmax")(x)))

save("unsupported", keras.Sequential([
    keras.Input((8, 8, 1)), layers.Flatten(), layers.RMSNormalization(name="rms"), layers.Dense(10),
]), trained=False)

save("lambda", keras.Sequential([
    keras.Input((8, 8, 1)), layers.Lambda(side_effect, name="side_effect"), layers.Flatten(),
    layers.Dense(10, activation="softmax"),
]))
"""


@pytest.fixture(scope="module")
def keras3(tmp_path_factory, marker_lambda) -> Path:
    """A folder of Keras 3 model files, written by one subprocess that runs Keras 3."""
    folder = tmp_path_factory.mktemp("keras3")
    marker = folder / "lambda.ran"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", KERAS3_MODELS, str(folder), marker_lambda(marker)],
                   env=env, check=True, timeout=300)
    marker.unlink()  # building the model ran the Lambda once
    return folder


@pytest.mark.parametrize("name", ["sequential", "residual"])
def test_keras3_model_is_rebuilt_in_tf_keras_with_the_same_outputs(keras3, name):
    path = keras3 / f"{name}.keras"
    model = read_model(path, "model.source")
    assert isinstance(model, keras.Model)
    expected = np.load(keras3 / f"{name}.npz")
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["y"], atol=1e-5)
    source = model_source(path)
    assert source == ModelSource(path, "keras", source.keras_version, converted=True)
    assert source.keras_version.startswith("3.")


def test_keras3_residual_model_keeps_its_graph(keras3):
    model = read_model(keras3 / "residual.keras", "model.source")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Rescaling", "BatchNormalization", "Add", "DepthwiseConv2D", "SeparableConv2D",
            "Concatenate", "GlobalAveragePooling2D", "Dropout"} <= kinds
    add = next(layer for layer in model.layers if type(layer).__name__ == "Add")
    assert len(add.input) == 2  # the skip connection is wired, not dropped


def test_keras3_model_that_converts_to_other_outputs_is_refused(keras3, monkeypatch):
    monkeypatch.setattr(keras.layers.Dense, "set_weights", lambda self, weights: None)
    with pytest.raises(InputError, match=r"model.source: .*residual.keras \(Keras 3\.[0-9.]+\) rebuilt "
                                         r"in tf_keras gives other outputs .*max abs difference"):
        read_model(keras3 / "residual.keras", "model.source")


def test_keras3_layer_without_a_tf_keras_twin_is_refused_by_name(keras3):
    with pytest.raises(InputError, match=r"layer 'rms' \(RMSNormalization\) has no tf_keras "
                                         r"equivalent; re-save the model with tf_keras, or drop layer 'rms'"):
        read_model(keras3 / "unsupported.keras", "model.source")


@pytest.fixture(params=["tf_keras.h5", "tf_keras.keras", "keras3.keras"])
def lambda_file(request, keras3, lambda_model, tmp_path) -> tuple[Path, Path]:
    """A model file whose Lambda layer creates a marker file when its code runs; (file, marker)."""
    if request.param == "keras3.keras":
        return keras3 / "lambda.keras", keras3 / "lambda.ran"
    marker = tmp_path / "lambda.ran"
    return lambda_model(tmp_path / f"lambda.{request.param.split('.')[1]}", marker), marker


def test_code_in_a_model_file_runs_only_when_trusted(lambda_file):
    path, marker = lambda_file
    with pytest.raises(InputError, match=r"model.source: .* has a Lambda layer 'side_effect', .*"
                                         r"set model.trust_code: true"):
        read_model(path, "model.source")
    assert not marker.exists()  # refused before any of the file's code ran
    model = read_model(path, "model.source", trust_code=True)
    assert marker.exists()
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("module", ["__main__", "my_layers"])  # a training script's class: no module
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_custom_layer_is_refused_by_name_even_inside_a_nested_model(tmp_path, suffix, module):
    twice = type("Twice", (keras.layers.Layer,), {"call": lambda self, x: 2 * x, "__module__": module})
    inner = keras.Sequential([keras.Input((4,)), twice(name="twice")], name="inner")
    path = tmp_path / f"custom{suffix}"
    keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)]).save(path)
    with pytest.raises(InputError, match=r"distill.student: .* has a custom layer 'twice' \(Twice\), "
                                         r".*set model.trust_code: true"):
        read_model(path, "distill.student")


def test_a_user_file_keras_cannot_read_is_input_a_stage_inputs_error_or_a_bug_is_not(
        tmp_path, monkeypatch):
    """InputError (exit 2) only for what the user can fix: their file. The pipeline's own files
    and errors that say nothing of the file (MemoryError, a bug) are raised as they are."""
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(InputError, match=r"model.source: cannot read .*bad.keras as a Keras model "
                                         r"\(ValueError: the zip holds no metadata.json"):
        read_model(bad, "model.source")
    with pytest.raises(ValueError, match="the zip holds no metadata.json") as error:
        read_model(bad)  # a stage input: a file the pipeline wrote itself
    assert not isinstance(error.value, InputError)
    good = tmp_path / "good.h5"
    write_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), good)
    for exc in (MemoryError(), AttributeError("'NoneType' object has no attribute 'layers'")):
        monkeypatch.setattr(keras.models, "load_model", Mock(side_effect=exc))
        with pytest.raises(type(exc)):
            read_model(good, "model.source")


def test_keras3_teacher_goes_through_the_load_stage(keras3, tmp_path):
    ws = Workspace(tmp_path)
    run_load(0, DataConfig(), ModelConfig(source=str(keras3 / "sequential.keras")), ws)
    teacher = keras.models.load_model(ws.teacher, compile=False)  # plain tf_keras reads it
    assert model_source(ws.teacher).keras_version.startswith("2.")
    expected = np.load(keras3 / "sequential.npz")
    np.testing.assert_allclose(teacher.predict(expected["x"], verbose=0), expected["y"], atol=1e-5)


@pytest.mark.parametrize("name, overrides", [
    ("residual", []),
    ("lambda", ["model.trust_code=true"]),  # a Sequential; trusted: its code may run, the run proceeds
])
def test_keras3_teachers_go_through_the_whole_flow(
    name, overrides, keras3, prefect_server, dvc_project, tiny_params
):
    from mlflow import MlflowClient

    from flows.compress import compress
    from flows.stages import STAGES

    params = tiny_params(f"model.source={keras3 / f'{name}.keras'}", *overrides)
    report = compress(params, workdir=str(dvc_project))
    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    assert (dvc_project / "artifacts" / "model.tflite").stat().st_size > 0
    assert 0 <= report["metrics"]["final"]["accuracy"] <= 1
    tags = MlflowClient(params.tracking.uri).get_run(report["mlflow_run_id"]).data.tags
    assert tags["teacher.converted"] == "true" and tags["teacher.keras_version"].startswith("3.")


@pytest.mark.parametrize(("scale", "pixels", "warned"), [
    (1 / 255, 1.0, True),  # EfficientNet's own rescaling, fed [0, 1] floats: nearly black
    (1 / 255, 255.0, False),  # the same, fed 0-255 (uint8 pixels: tests/test_load.py)
    (1.0, 1.0, False),  # no rescaling of its own
])
def test_a_teacher_that_scales_pixels_itself_is_warned_about_scaled_data(
        digits, caplog, scale, pixels, warned):
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(scale),
                                keras.layers.Flatten(), keras.layers.Dense(10)])
    data = replace(digits, train=Split.of(digits.train.read() * pixels, digits.train.labels))
    with caplog.at_level(logging.WARNING, logger="tasks.load"):
        warn_if_scaled_twice(teacher, data)
    assert ("give it unscaled pixels" in caplog.text) == warned
