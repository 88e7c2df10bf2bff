"""Nested models (a backbone called as a layer, a Sequential block inside it, a Sequential head)
are flattened at load into one graph of the same layers and weights, exactly, from tf_keras and
Keras 3 files; every stage then works through it, teacher-channel init included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from tasks.errors import InputError
from tasks.flatten import flattened, nested_models
from tasks.friendly import without_blocks
from tasks.models import read_model, write_model
from tasks.students import derive_student

# Run with the Keras to build in (`keras`: Keras 3, or `tf_keras`) and the folder to write to.
NESTED_MODEL = """
import sys
import numpy as np
from sklearn.datasets import load_digits
module, out = sys.argv[1], sys.argv[2]
keras = __import__(module)
layers = keras.layers
keras.utils.set_random_seed(0)

block = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(8, 3, padding="same"),
                          layers.BatchNormalization(), layers.ReLU()], name="stem_block")
inputs = keras.Input((8, 8, 1))
stem = block(inputs)
x = layers.Add()([stem, layers.Conv2D(8, 3, padding="same", activation="relu")(stem)])
backbone = keras.Model(inputs, layers.MaxPooling2D(2)(x), name="backbone")

inputs = keras.Input((8, 8, 1))
x = backbone(layers.Rescaling(1.0)(inputs), training=False)
x = layers.GlobalAveragePooling2D()(x)
head = keras.Sequential([layers.Dense(16, activation="relu"),
                         layers.Dense(10, activation="softmax")], name="head")
model = keras.Model(inputs, head(x), name="transfer")
digits = load_digits()  # trained: its weights and BatchNorm statistics are no initial values
model.compile("adam", "sparse_categorical_crossentropy")
model.fit((digits.images / 16)[..., None], digits.target, epochs=10, verbose=0)
backbone.trainable = False  # as a transfer-learning guide freezes it
suffix = "keras" if module == "keras" else "h5"
model.save(f"{out}/{module}.{suffix}")
x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
np.savez(f"{out}/{module}.npz", x=x, y=model.predict(x, verbose=0))
"""


@pytest.fixture(scope="module")
def nested_files(tmp_path_factory) -> Path:
    """The same nested model saved by tf_keras (.h5) and by Keras 3 (.keras), with the outputs
    each gave on a random batch."""
    folder = tmp_path_factory.mktemp("nested")
    for module in ("tf_keras", "keras"):
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        subprocess.run([sys.executable, "-c", NESTED_MODEL, module, str(folder)], env=env,
                       check=True, timeout=300)
    return folder


@pytest.mark.parametrize("kind", ["tf_keras.h5", "keras.keras"])
def test_a_nested_model_file_is_flattened_exactly(nested_files, kind):
    model = read_model(nested_files / kind, "model.source")
    assert nested_models(model) == []
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert {"stem_block", "backbone", "head"}.isdisjoint(layer.name for layer in model.layers)
    assert all(layer.trainable for layer in model.layers)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 2
    expected = np.load(nested_files / f"{kind.split('.')[0]}.npz")
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["y"], atol=1e-5)


def test_a_student_copies_the_teachers_channels_through_the_flattened_graph(nested_files):
    teacher = read_model(nested_files / "tf_keras.h5", "model.source")
    student = derive_student(teacher, 0.5, "teacher")
    convolutions = [layer.name for layer in student.layers
                    if isinstance(layer, keras.layers.Conv2D)]
    assert [student.get_layer(name).filters for name in convolutions] == [4, 4]
    stem = convolutions[0]  # reads the one input channel: its kept filters are whole
    kept, own = (model.get_layer(stem).get_weights()[0] for model in (student, teacher))
    assert all(any(np.array_equal(kept[..., c], own[..., t]) for t in range(own.shape[-1]))
               for c in range(kept.shape[-1]))


def test_a_student_rebuilt_from_the_flat_graph_is_written_and_read_back(nested_files, tmp_path):
    """distill.blocks and distill.downsample rebuild the student from its config (tasks/friendly.py):
    the flattened graph must survive that into a file (an input made from a type spec did not)."""
    teacher = read_model(nested_files / "keras.keras", "model.source")
    student = without_blocks(derive_student(teacher, 0.5, "teacher"), "fewest")
    assert not any(isinstance(layer, keras.layers.Add) for layer in student.layers)
    write_model(student, tmp_path / "student.h5")
    assert read_model(tmp_path / "student.h5").count_params() == student.count_params()


def test_a_flat_model_is_left_as_it_is(tiny_cnn):
    assert flattened(tiny_cnn, "model.source") is tiny_cnn


def test_a_model_calling_a_subclassed_model_is_refused_by_name():
    class Doubled(keras.Model):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Doubled(name="doubled")(inputs)))
    with pytest.raises(InputError, match=r"model.source: cannot flatten the model\(s\) doubled "
                                         r".*subclassed model.*one functional graph"):
        flattened(model, "model.source")


def test_a_nested_keras3_teacher_goes_through_the_whole_flow(nested_files, prefect_server,
                                                             dvc_project, tiny_params):
    """Teacher-channel init at half width, pruning and full-integer INT8 through a backbone and
    head that the Keras 3 file calls as layers."""
    from flows.compress import compress
    from flows.stages import STAGES

    params = tiny_params(f"model.source={nested_files / 'keras.keras'}", "distill.width=0.5")
    report = compress(params, workdir=str(dvc_project))
    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    metrics = report["metrics"]
    assert metrics["final"]["params"] < metrics["teacher"]["params"]
    assert metrics["final"]["sparsity"] > 0.3
    student = read_model(dvc_project / "artifacts" / "student.h5")
    assert nested_models(student) == []
