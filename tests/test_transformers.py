"""Transformers built of Keras layers: a ViT (patch Conv2D, a positional Embedding, blocks of
LayerNormalization, MultiHeadAttention, a GELU MLP and residual Adds) and a text encoder (token
and position Embeddings, the same blocks, pooling, a Dense head) derive narrower students whose
weights are the teacher's strongest channels, heads and units; at width 1.0 a student computes
what its teacher does; students convert to int8 and run in LiteRT; a ViT goes through the whole
flow; what cannot be followed is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from test_kinds import CLASSES, LENGTH, VOCABULARY, compressed, token_ids

from tasks.attention import narrowed_attention
from tasks.channels import narrowed_units
from tasks.config import QuantizeConfig
from tasks.errors import InputError
from tasks.friendly import block_choices
from tasks.models import seed_everything, write_model
from tasks.quantize import quantize_model
from tasks.students import derive_student
from tasks.tflite import TFLiteClassifier

DIM, HEADS, KEY, MLP = 8, 4, 2, 16  # the tiny blocks: 2 heads, key 2 and 8 MLP units at 0.5


def encoder(x, blocks: int = 2, heads: int = HEADS, key: int = KEY, mlp: int = MLP):
    """`blocks` pre-norm encoder blocks on the tokens `x` (batch, tokens, channels), named
    ln1_b, mha_b, ln2_b, mlp1_b, mlp2_b; then a LayerNormalization and the tokens' mean."""
    for b in range(blocks):
        h = keras.layers.LayerNormalization(name=f"ln1_{b}")(x)
        h = keras.layers.MultiHeadAttention(heads, key, name=f"mha_{b}")(h, h)
        x = keras.layers.Add()([x, h])
        h = keras.layers.LayerNormalization(name=f"ln2_{b}")(x)
        h = keras.layers.Dense(mlp, activation="gelu", name=f"mlp1_{b}")(h)
        x = keras.layers.Add()([x, keras.layers.Dense(x.shape[-1], name=f"mlp2_{b}")(h)])
    return keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization(name="ln")(x))


def positioned(x):
    """`x` plus a learned embedding of each token's position (0, 1, ...: from its shape)."""
    positions = tf.range(tf.shape(x)[1])
    return x + keras.layers.Embedding(x.shape[1], x.shape[-1], name="positions")(positions)


def vit(shape: tuple[int, ...] = (8, 8, 1), patch: int = 2, dim: int = DIM, classes: int = 10,
        **blocks) -> keras.Model:
    """A ViT: patch-by-patch Conv2D, tokens with their positions, `encoder` (`blocks`), a head."""
    images = keras.Input(shape)
    patches = keras.layers.Conv2D(dim, patch, strides=patch, name="patches")(images)
    tokens = positioned(keras.layers.Reshape((-1, dim))(patches))
    return keras.Model(images, keras.layers.Dense(classes, activation="softmax", name="head")(
        encoder(tokens, **blocks)))


def text_transformer(dim: int = DIM, **blocks) -> keras.Model:
    """Token ids (test_kinds `token_ids`) embedded with their positions, `encoder`, a head."""
    ids = keras.Input((LENGTH,), dtype="int32")
    tokens = positioned(keras.layers.Embedding(VOCABULARY, dim, name="tokens")(ids))
    return keras.Model(ids, keras.layers.Dense(CLASSES, activation="softmax", name="head")(
        encoder(tokens, **blocks)))


def images(samples: int) -> np.ndarray:
    return np.random.default_rng(1).random((samples, 8, 8, 1), np.float32)


MODELS = {"vit": (vit, images), "text": (text_transformer, lambda n: token_ids(n, seed=2)[0])}


def named_weights(model: keras.Model, layer: str) -> dict[str, np.ndarray]:
    """A layer's weights by name within it: "kernel", "query/kernel", "gamma", ..."""
    return {weight.name.split(":")[0].split("/", 1)[-1]: weight.numpy()
            for weight in model.get_layer(layer).weights}


def scaled_teacher(build) -> keras.Model:
    """`build()` with the strongest residual channels the odd ones, the strongest heads 1 and 3,
    and the strongest MLP units the first half: every other channel, head and unit is weakened
    (x 0.1) in every weight that ranks it. Biases and LayerNorms are random, so that their
    slices show too."""
    seed_everything(0)
    teacher, rng = build(), np.random.default_rng(0)
    channels, heads, units = np.arange(0, DIM, 2), np.array([0, 2]), np.arange(MLP // 2, MLP)
    for layer in teacher.layers:
        weights = named_weights(teacher, layer.name)
        for name, value in weights.items():
            if name.endswith(("bias", "gamma", "beta")):
                value[...] = rng.normal(size=value.shape)
            if layer.name in ("patches", "positions", "tokens") or layer.name.startswith("mlp2"):
                value[..., channels] *= 0.1
            elif layer.name.startswith("mlp1") and name == "kernel":
                value[..., units] *= 0.1
            elif name == "value/kernel":
                value[:, heads] *= 0.1
            elif name == "attention_output/kernel":
                value[..., channels] *= 0.1
        layer.set_weights(list(weights.values()))
    return teacher


@pytest.mark.parametrize("model", MODELS, ids=list(MODELS))
def test_a_half_width_student_keeps_the_strongest_channels_heads_and_units(model):
    """Every weight of the student's attention, LayerNorms and MLP is the teacher's, sliced to
    the odd residual channels, heads 1 and 3 (all their key dims) and the first MLP units."""
    teacher = scaled_teacher(MODELS[model][0])
    student = derive_student(teacher, 0.5, "teacher")
    channels, heads, units = np.arange(1, DIM, 2), np.array([1, 3]), np.arange(MLP // 2)
    for b in range(2):
        mha, taught = named_weights(student, f"mha_{b}"), named_weights(teacher, f"mha_{b}")
        assert mha["query/kernel"].shape == (DIM // 2, 2, KEY)
        for part in ("query", "key", "value"):
            np.testing.assert_array_equal(mha[f"{part}/kernel"],
                                          taught[f"{part}/kernel"][channels][:, heads])
            np.testing.assert_array_equal(mha[f"{part}/bias"], taught[f"{part}/bias"][heads])
        np.testing.assert_array_equal(mha["attention_output/kernel"],
                                      taught["attention_output/kernel"][heads][..., channels])
        for norm in (f"ln1_{b}", f"ln2_{b}"):
            for name, value in named_weights(student, norm).items():
                np.testing.assert_array_equal(value, named_weights(teacher, norm)[name][channels])
        for mlp, rows, columns in ((f"mlp1_{b}", channels, units), (f"mlp2_{b}", units, channels)):
            np.testing.assert_array_equal(named_weights(student, mlp)["kernel"],
                                          named_weights(teacher, mlp)["kernel"][rows][:, columns])
    np.testing.assert_array_equal(named_weights(student, "positions")["embeddings"],
                                  named_weights(teacher, "positions")["embeddings"][:, channels])
    np.testing.assert_array_equal(named_weights(student, "head")["kernel"],
                                  named_weights(teacher, "head")["kernel"][channels])


@pytest.mark.parametrize("model", MODELS, ids=list(MODELS))
def test_a_full_width_student_computes_what_its_teacher_does(model):
    build, samples = MODELS[model]
    seed_everything(0)
    teacher = build()
    x = samples(20)
    student = derive_student(teacher, 1.0, "teacher")
    np.testing.assert_allclose(student.predict(x, verbose=0), teacher.predict(x, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("model", MODELS, ids=list(MODELS))
def test_a_student_converts_to_int8_and_runs_in_litert(model):
    """Full integer: int8 LayerNorm, softmax and GELU; ids stay int32, pixels become int8."""
    build, samples = MODELS[model]
    seed_everything(0)
    teacher, x = build(), samples(30)
    student = derive_student(teacher, 0.5, "teacher", activations="relu")
    quantized = quantize_model(student, QuantizeConfig(), x[:20])
    classifier = TFLiteClassifier(quantized.tflite)
    assert quantized.mode == "int8" and classifier.output["dtype"] == np.int8
    assert classifier.input["dtype"] == (np.int8 if model == "vit" else np.int32)
    assert classifier.predict(x[20:]).shape == (10, teacher.output_shape[-1])


def test_attention_narrows_by_heads_and_cuts_the_key_only_at_one_head():
    config = {"num_heads": 4, "key_dim": 16, "value_dim": 8, "query_shape": (None, 5, 64)}
    sizes = {width: {key: narrowed_attention(config, width, narrowed_units)[key]
                     for key in ("num_heads", "key_dim", "value_dim")}
             for width in (1.0, 0.5, 0.25, 0.125)}
    assert sizes == {1.0: {"num_heads": 4, "key_dim": 16, "value_dim": 8},
                     0.5: {"num_heads": 2, "key_dim": 16, "value_dim": 8},
                     0.25: {"num_heads": 1, "key_dim": 16, "value_dim": 8},
                     0.125: {"num_heads": 1, "key_dim": 8, "value_dim": 4}}
    assert "query_shape" not in narrowed_attention(config, 0.5, narrowed_units)


def test_a_one_head_student_keeps_the_strongest_key_dims_at_the_teachers_temperature():
    """A teacher whose only live head is 2, and in it key and value dims 0-3 of 8: its student
    at width 0.125 (one head, key and value size 4) computes exactly what it does, which holds
    only when the kept query is rescaled for Keras's 1/sqrt(key_dim)."""
    seed_everything(0)
    tokens = keras.Input((6, DIM))
    attended = keras.layers.MultiHeadAttention(4, 8, name="mha")(tokens, tokens)
    teacher = keras.Model(tokens, keras.layers.Dense(CLASSES, name="head")(
        keras.layers.GlobalAveragePooling1D()(attended)))
    query, query_bias, key, key_bias, value, value_bias, *output = \
        teacher.get_layer("mha").get_weights()
    value[:, [0, 1, 3]], value_bias[[0, 1, 3]] = 0, 0  # heads 0, 1 and 3 write nothing
    query[..., 4:], query_bias[..., 4:] = 0, 0  # key dims 4-7 score nothing
    value[..., 4:], value_bias[..., 4:] = 0, 0  # value dims 4-7 write nothing
    teacher.get_layer("mha").set_weights([query, query_bias, key, key_bias, value, value_bias,
                                          *output])
    student = derive_student(teacher, 0.125, "teacher")
    config = student.get_layer("mha").get_config()
    assert (config["num_heads"], config["key_dim"], config["value_dim"]) == (1, 4, 4)
    x = np.random.default_rng(3).normal(size=(10, 6, DIM)).astype(np.float32)
    np.testing.assert_allclose(student.predict(x, verbose=0), teacher.predict(x, verbose=0),
                               atol=1e-5)


def test_half_the_blocks_of_a_vit_are_whole_layers():
    """A transformer layer's attention and MLP blocks go together: `half` of a 3-layer ViT keeps
    its first and last layers, each with its attention and its MLP at their teacher weights."""
    seed_everything(0)
    teacher = vit(blocks=3)
    assert block_choices(teacher) == ["all", "half", "fewest"]
    student = derive_student(teacher, 1.0, "teacher", blocks="half")
    kept = {layer.name for layer in student.layers}
    assert {"ln1_0", "mha_0", "mlp2_0", "ln1_2", "mha_2", "mlp2_2"} <= kept
    assert not kept & {"ln1_1", "mha_1", "ln2_1", "mlp1_1", "mlp2_1"}
    for name, value in named_weights(student, "mha_2").items():
        np.testing.assert_array_equal(value, named_weights(teacher, "mha_2")[name])


def test_attention_that_cannot_be_followed_is_refused_by_name():
    tokens = keras.Input((6, DIM))
    projected = keras.layers.MultiHeadAttention(2, 4, output_shape=4, name="projecting")(
        tokens, tokens)
    teacher = keras.Model(tokens, keras.layers.Dense(CLASSES)(
        keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(16)(projected))))
    with pytest.raises(InputError, match=r"distill.init: teacher cannot copy channels through "
                       r"projecting \(MultiHeadAttention\): its output_shape is set"):
        derive_student(teacher, 0.5, "teacher")


def test_a_vit_goes_through_the_whole_flow(digits_npz, prefect_server, dvc_project, tiny_params,
                                           tmp_path_factory):
    data = np.load(digits_npz)
    seed_everything(0)
    teacher = vit()
    teacher.compile("adam", "sparse_categorical_crossentropy")
    teacher.fit(data["x"], data["y"], epochs=10, verbose=0)  # 46 % on the digits: beats chance
    path = tmp_path_factory.mktemp("vit") / "vit.h5"
    write_model(teacher, path)
    final = compressed(digits_npz, path, dvc_project, tiny_params)
    assert final.input["dtype"] == np.int8 and final.output["shape"][-1] == 10
