"""Classifiers that are not image CNNs: a text classifier (integer token ids into an Embedding,
then an LSTM), a tabular MLP and a Conv1D sequence model go through the whole flow; recurrent
layers convert in every mode LiteRT runs, on fast kernels by default, and keep whole units in a
student; bad input is refused before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from flows.stages import check_inputs
from tasks.config import QuantizeConfig
from tasks.errors import InputError
from tasks.models import seed_everything, write_model
from tasks.quantize import convert_to_tflite, quantize_model
from tasks.tflite import TFLiteClassifier

LENGTH, VOCABULARY, CLASSES = 12, 30, 3


def token_ids(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of token ids; the label is the third of the vocabulary the last one is from."""
    x = np.random.default_rng(seed).integers(0, VOCABULARY, (samples, LENGTH))
    return x, x[:, -1] // (VOCABULARY // CLASSES)


def text_classifier(recurrent: keras.layers.Layer) -> keras.Model:
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    embedded = keras.layers.Embedding(VOCABULARY, 8)(ids)
    return keras.Model(ids, keras.layers.Dense(CLASSES, activation="softmax")(recurrent(embedded)))


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> tuple[Path, Path]:
    """A trained Embedding + LSTM teacher file and its data as an `npz:` source (int ids)."""
    root = tmp_path_factory.mktemp("text")
    x, y = token_ids(400)
    np.savez(root / "text.npz", x=x, y=y)
    seed_everything(0)
    teacher = text_classifier(keras.layers.LSTM(16))
    teacher.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    learned = teacher.fit(x, y, epochs=30, verbose=0).history["accuracy"][-1]
    assert learned > 0.95  # confident predictions (at 89 %, int8 agreed with Keras on 78 %)
    write_model(teacher, root / "teacher.h5")
    return root / "text.npz", root / "teacher.h5"


@pytest.mark.parametrize("recurrent", [keras.layers.LSTM(8), keras.layers.GRU(8),
                                       keras.layers.SimpleRNN(8),
                                       keras.layers.Bidirectional(keras.layers.LSTM(4))],
                         ids=["lstm", "gru", "simple_rnn", "bidirectional"])
def test_a_recurrent_model_converts_for_batch_1_and_predicts_as_keras(recurrent):
    model = text_classifier(recurrent)
    x, _ = token_ids(20, seed=1)
    classifier = TFLiteClassifier(convert_to_tflite(model))
    assert classifier.batch == 1 and classifier.input["dtype"] == np.int32  # ids stay ids
    np.testing.assert_allclose(classifier.predict(x), model.predict(x, verbose=0), atol=1e-5)


def stacked() -> keras.Model:
    return keras.Sequential([keras.layers.LSTM(8, return_sequences=True), keras.layers.GRU(8)])


@pytest.mark.parametrize("recurrent", [lambda: keras.layers.LSTM(8), lambda: keras.layers.GRU(8),
                                       lambda: keras.layers.GRU(48), lambda: keras.layers.SimpleRNN(8),
                                       lambda: keras.layers.Bidirectional(keras.layers.LSTM(4)),
                                       stacked],
                         ids=["lstm", "gru", "gru48", "simple_rnn", "bidirectional", "stacked"])
def test_the_default_quantization_runs_a_recurrent_model_on_float_kernels(recurrent):
    """Full integer puts an LSTM on a slow integer kernel and crashes the converter on a GRU
    (docs/quantization.md): the default gives a recurrent model weight-only quantization, so its
    recurrent op (a fused sequence op, or a GRU's loop) computes in float."""
    model = keras.Sequential([keras.Input((LENGTH, 4)), recurrent(),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    samples = np.random.default_rng(0).random((4, LENGTH, 4), np.float32)
    quantized = quantize_model(model, QuantizeConfig(), samples)
    assert quantized.mode in ("dynamic", "float16")
    computes = op_input_types(quantized.tflite)
    assert computes.keys() & {"UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "WHILE"}
    assert not set(computes.values()) & {np.int8, np.int16}  # (a loop's counter is int32)


def op_input_types(tflite: bytes) -> dict[str, type]:
    """Each op type of the .tflite's main graph and the type of its first input (the activations
    for compute ops), read without any delegate."""
    interpreter = Interpreter(
        model_content=tflite,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return {op["op_name"]: interpreter._get_tensor_details(int(op["inputs"][0]), 0)["dtype"]
            for op in interpreter._get_ops_details() if op["op_name"] != "DEQUANTIZE"}


def test_every_sample_of_a_recurrent_model_starts_from_a_zero_state(text_files):
    """TFLite's LSTM keeps its state between invokes: the trained teacher's predictions one after
    another must equal Keras's, as if each were the only one."""
    teacher = keras.models.load_model(text_files[1])
    x, _ = token_ids(20, seed=5)
    np.testing.assert_allclose(TFLiteClassifier(convert_to_tflite(teacher)).predict(x),
                               teacher.predict(x, verbose=0), atol=1e-4)


def test_an_int8_text_classifier_keeps_integer_ids_and_float_logic(text_files):
    _, teacher_file = text_files
    teacher = keras.models.load_model(teacher_file)
    x, _ = token_ids(40, seed=2)
    classifier = TFLiteClassifier(convert_to_tflite(teacher, "int8", x[:20]))
    assert classifier.input["dtype"] == np.int32 and classifier.output["dtype"] == np.int8
    agree = classifier.predict(x).argmax(-1) == teacher.predict(x, verbose=0).argmax(-1)
    assert agree.mean() >= 0.9


def test_a_text_classifier_goes_through_the_whole_flow(text_files, prefect_server, dvc_project,
                                                      tiny_params):
    final = compressed(*text_files, dvc_project, tiny_params, recurrent=True)  # teacher init
    assert final.input["dtype"] == np.int32 and final.batch == 1


def tabular_mlp() -> keras.Model:
    return keras.Sequential([keras.Input((30,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(CLASSES, activation="softmax")])


def sequence_cnn() -> keras.Model:
    return keras.Sequential([keras.Input((24, 3)), keras.layers.Conv1D(16, 3, activation="relu"),
                             keras.layers.Conv1D(16, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(CLASSES, activation="softmax")])


@pytest.mark.parametrize("build", [tabular_mlp, sequence_cnn], ids=["tabular", "conv1d"])
def test_float_feature_classifiers_go_through_the_whole_flow(build, prefect_server, dvc_project,
                                                            tiny_params, tmp_path_factory):
    """30 features per sample, or 24 steps of 3 channels: float in, int8 in the full-integer
    model, the label a linear rule of the features that both can learn (their standardised sum:
    a Conv1D's global pooling keeps no position; three classes of about a third each)."""
    seed_everything(0)
    teacher, files = build(), tmp_path_factory.mktemp("features")
    x = np.random.default_rng(4).normal(size=(300, *teacher.input_shape[1:])).astype(np.float32)
    flat = x.reshape(len(x), -1)
    y = np.digitize(flat.sum(axis=1) / np.sqrt(flat.shape[1]), [-0.43, 0.43])
    np.savez(files / "features.npz", x=x, y=y)
    teacher.compile("adam", "sparse_categorical_crossentropy")
    teacher.fit(x, y, epochs=30, verbose=0)  # above chance: the load stage checks
    write_model(teacher, files / "teacher.h5")
    final = compressed(files / "features.npz", files / "teacher.h5", dvc_project, tiny_params)
    assert final.input["dtype"] == np.int8 and list(final.input["shape"][1:]) == list(x.shape[1:])


def compressed(data: Path, teacher: Path, project: Path, tiny_params,
               recurrent: bool = False) -> TFLiteClassifier:
    """The deployed model of a whole flow run on `data` and `teacher`, each stage run, at half
    width (teacher init); its student narrower than the teacher, full integer, or for a
    `recurrent` one the smaller of dynamic and float16 (tasks/quantize.py `recurrent_int8`), as
    metrics.json records."""
    from flows.compress import compress
    from flows.stages import STAGES

    params = tiny_params(f"data.source=npz:{data}", f"model.source={teacher}", "distill.width=0.5")
    report = compress(params, workdir=str(project))
    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    metrics = report["metrics"]
    assert metrics["final"]["params"] < metrics["teacher"]["params"]
    quantization = metrics["quantization"]
    if recurrent:
        assert quantization["mode"] in ("dynamic", "float16")
    else:
        assert quantization["mode"] == "int8" and "int8" in quantization["layer_precisions"]
    return TFLiteClassifier((project / "artifacts" / "model.tflite").read_bytes())


def test_float_samples_for_a_model_of_integer_ids_are_refused_before_training(
        text_files, tiny_params, tmp_path):
    _, teacher = text_files
    x, y = token_ids(200)
    np.savez(tmp_path / "scaled.npz", x=x / VOCABULARY, y=y)  # ids scaled like pixels: wrong
    params = tiny_params(f"data.source=npz:{tmp_path / 'scaled.npz'}", f"model.source={teacher}",
                         "distill.init=random")
    with pytest.raises(InputError, match=r"model.source: the model takes integer inputs \(int32"):
        check_inputs(params)


@pytest.mark.parametrize("recurrent", [keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN],
                         ids=["lstm", "gru", "simple_rnn"])
def test_a_recurrent_student_keeps_whole_units_of_its_teacher(recurrent):
    """A teacher whose second half of embedding dimensions and units is dead (tiny, and read by
    nothing): the half-width student initialised from it must compute exactly what it does, which
    holds only when every gate of each kept unit, and its recurrent row, was kept together."""
    from tasks.students import derive_student

    seed_everything(0)
    teacher = text_classifier(recurrent(8))
    embedding, rnn, dense = teacher.layers[1:]
    vectors = embedding.get_weights()[0]
    vectors[:, 4:] *= 1e-3  # the least important dimensions
    kernel, recurrent_kernel, *bias = rnn.get_weights()
    gates = kernel.shape[1] // 8
    dead = (np.arange(gates)[:, None] * 8 + np.arange(4, 8)[None, :]).ravel()
    kernel[4:] = 0  # reads nothing from the dropped dimensions
    kernel[:, dead] *= 1e-3  # the least important units...
    recurrent_kernel[4:] = 0  # ...read by no unit
    dense_kernel, dense_bias = dense.get_weights()
    dense_kernel[4:] = 0  # nor by the classifier
    embedding.set_weights([vectors])
    rnn.set_weights([kernel, recurrent_kernel, *bias])
    dense.set_weights([dense_kernel, dense_bias])

    student = derive_student(teacher, 0.5, "teacher")
    assert [layer.get_config().get("units", layer.get_config().get("output_dim"))
            for layer in student.layers[1:]] == [4, 4, CLASSES]
    x, _ = token_ids(50, seed=3)
    np.testing.assert_allclose(student.predict(x, verbose=0), teacher.predict(x, verbose=0),
                               atol=1e-5)


def test_a_bidirectional_layer_is_refused_by_name_for_teacher_init():
    from tasks.students import derive_student

    teacher = text_classifier(keras.layers.Bidirectional(keras.layers.LSTM(4), name="both_ways"))
    with pytest.raises(InputError, match=r"distill.init: teacher cannot copy channels through "
                       r"both_ways \(Bidirectional\): only LSTM, GRU and SimpleRNN layers are "
                       r"followed unit by unit; use distill.init: random"):
        derive_student(teacher, 0.5, "teacher")
