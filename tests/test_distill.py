"""Distillation: the student's shape, the loss, and a sparse student that learns."""

import itertools
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from flows.workspace.params import load_params
from tasks.auto_width import cannot_narrow, smallest_likely, smallest_within
from tasks.channels import gate_layers, teacher_widths, width_key
from tasks.config import (
    DistillConfig,
    GateConfig,
    ModelConfig,
    Params,
    SearchConfig,
    SparsifyConfig,
    StudentBlocks,
)
from tasks.errors import InputError
from tasks.friendly import (
    BLOCKS_KEPT,
    block_choices,
    downsample_choices,
    identity_blocks,
    student_changes,
)
from tasks.gate import decide_rule
from tasks.load import train_teacher
from tasks.models import overall_sparsity, write_model
from tasks.quantize import convert_to_tflite
from tasks.search import search_space
from tasks.students import (
    CHANNEL_BYTES,
    Rung,
    deployed_bytes,
    derive_student,
    student_ladder,
)
from tasks.teaching import DistillationLoss, distill
from tasks.views import check_augment, consistent_views

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def test_derived_student_is_narrower_everywhere_but_the_output(tiny_cnn):
    student = derive_student(tiny_cnn, width=0.5, init="random")
    widths = {layer.name: layer.get_config().get("filters") or layer.get_config().get("units")
              for layer in student.layers}
    assert widths == {"conv": 4, "flatten": None, "dense": 16, "out": 10}
    assert student.input_shape == tiny_cnn.input_shape


def top_l1(kernel: np.ndarray, keep: int) -> np.ndarray:
    """The output channels with the largest L1 norms, ascending."""
    return np.sort(np.argsort(-np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0))[:keep])


def test_teacher_init_copies_the_top_l1_channels_on_both_sides(tiny_cnn):
    student = derive_student(tiny_cnn, width=0.5, init="teacher")
    conv, dense, out = (tiny_cnn.get_layer(name).get_weights() for name in ("conv", "dense", "out"))
    conv_kept, dense_kept = top_l1(conv[0], 4), top_l1(dense[0], 16)
    copied_conv = student.get_layer("conv").get_weights()
    np.testing.assert_array_equal(copied_conv[0], conv[0][..., conv_kept])
    np.testing.assert_array_equal(copied_conv[1], conv[1][conv_kept])
    # flatten: the (6, 6) positions of each kept conv channel feed the dense layer
    rows = dense[0].reshape(6, 6, 8, 32)[:, :, conv_kept][..., dense_kept].reshape(-1, 16)
    np.testing.assert_array_equal(student.get_layer("dense").get_weights()[0], rows)
    np.testing.assert_array_equal(student.get_layer("dense").get_weights()[1], dense[1][dense_kept])
    np.testing.assert_array_equal(student.get_layer("out").get_weights()[0], out[0][dense_kept])
    np.testing.assert_array_equal(student.get_layer("out").get_weights()[1], out[1])  # all classes


def residual_model() -> keras.Model:
    """Conv-BN-ReLU stem, a Conv-BN-ReLU-Conv-BN branch added back to it, pooled Dense head.

    Kernels are scaled so the stem alone would keep channels {0, 1, 6, 7}, the branch's last conv
    alone {2, 3, 6, 7}, and the two together {0, 1, 2, 3}; BatchNorm weights differ per channel.
    """
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    stem = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(
        layers.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    branch = layers.ReLU()(layers.BatchNormalization(name="a_bn")(
        layers.Conv2D(8, 3, padding="same", name="a")(stem)))
    branch = layers.Conv2D(8, 3, padding="same", name="b")(branch)
    branch = layers.BatchNormalization(name="b_bn")(branch)
    merged = layers.ReLU()(layers.Add(name="add")([stem, branch]))
    outputs = layers.Dense(10, name="out")(layers.GlobalAveragePooling2D()(merged))
    model = keras.Model(inputs, outputs)
    norms = {"stem": [10, 9, 1, 1, 0, 0, 2, 2], "a": range(8), "b": [0, 0, 10, 9, 0, 0, 2, 2]}
    for name, norm in norms.items():  # channel c's L1 norm is norm[c]
        kernel, bias = model.get_layer(name).get_weights()
        scaled = np.ones_like(kernel) / kernel[..., 0].size * np.array(norm, np.float32)
        model.get_layer(name).set_weights([scaled, bias])
    for name in ("stem_bn", "a_bn", "b_bn"):  # gamma, beta, mean, variance (> 0)
        model.get_layer(name).set_weights([np.arange(8, dtype=np.float32) + k for k in range(1, 5)])
    return model


def test_residual_student_keeps_the_same_channels_on_both_sides_of_the_add(digits):
    teacher = residual_model()
    student = derive_student(teacher, width=0.5, init="teacher")
    shared, own = [0, 1, 2, 3], [4, 5, 6, 7]  # summed L1 of stem + b; a's own largest
    for name, kept in (("stem", shared), ("b", shared), ("a", own)):
        np.testing.assert_array_equal(student.get_layer(name).get_weights()[0][0, 0, 0],
                                      teacher.get_layer(name).get_weights()[0][0, 0, 0, kept])
    for name, kept in (("stem_bn", shared), ("b_bn", shared), ("a_bn", own)):
        for copied, original in zip(student.get_layer(name).get_weights(),
                                    teacher.get_layer(name).get_weights()):
            np.testing.assert_array_equal(copied, original[kept])
    a_kernel = teacher.get_layer("a").get_weights()[0]  # reads the stem's kept channels
    np.testing.assert_array_equal(student.get_layer("a").get_weights()[0],
                                  a_kernel[:, :, shared][..., own])
    assert student.predict(digits.val.read(), verbose=0).shape == (len(digits.val), 10)


def squeeze_excite_model(gate: str = "conv") -> keras.Model:
    """EfficientNet's blocks in small: input Normalization, a conv, and a squeeze-and-excitation
    gate whose bottleneck has 6 units: 1x1 convs after a squeeze (pooling, then a Reshape to
    (1, 1, C)), as EfficientNet; or `dense` layers, then the Reshape, fixed to (1, 1, 16)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    normalized = keras.layers.Normalization(mean=0.3, variance=0.1, name="norm")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="swish", name="conv")(normalized)
    se = keras.layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    if gate == "conv":
        se = keras.layers.Reshape((1, 1, 16), name="se_reshape")(se)
        se = keras.layers.Conv2D(6, 1, activation="swish", name="se_reduce")(se)
        se = keras.layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(se)
    else:
        se = keras.layers.Dense(6, activation="swish", name="se_reduce")(se)
        se = keras.layers.Dense(16, activation="sigmoid", name="se_expand")(se)
        se = keras.layers.Reshape((1, 1, 16), name="se_reshape")(se)
    x = keras.layers.Multiply(name="se_excite")([x, se])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(x))


@pytest.mark.parametrize("gate", ["conv", "dense"])
def test_squeeze_excite_student_is_a_valid_graph_and_its_gate_does_not_bound_the_widths(
        digits, gate):
    teacher = squeeze_excite_model(gate)
    assert gate_layers(teacher) == {"se_reduce", "se_expand"}
    assert teacher_widths(teacher, "distill.width") == [0.5, 0.354, 0.25]  # the gate aside
    student = derive_student(teacher, width=0.5, init="teacher")
    assert student.get_layer("conv").filters == 8
    assert student.get_layer("se_reduce").get_config()[width_key(teacher.get_layer("se_reduce"))] \
        == 4  # 3 would be below MIN_UNITS
    reshape = student.get_layer("se_reshape")
    if gate == "dense":  # static: for the converter (-1 made a flex op)
        assert reshape.target_shape == (1, 1, 8)
    else:  # a squeeze: pooled with keepdims (tasks/friendly.py)
        assert isinstance(reshape, keras.layers.Identity)
        assert student.get_layer("se_squeeze").keepdims
    assert student.predict(digits.val.read(), verbose=0).shape == (len(digits.val), 10)
    assert convert_to_tflite(student, "int8", digits.val.read(slice(8)))
    same = derive_student(teacher, width=1.0, init="teacher")  # every weight copied through
    np.testing.assert_allclose(same.predict(digits.val.read(), verbose=0),
                               teacher.predict(digits.val.read(), verbose=0), rtol=1e-5, atol=1e-6)


def tflite_ops(tflite: bytes) -> Counter:
    return Counter(op["op_name"] for op in Interpreter(model_content=tflite)._get_ops_details())


@pytest.mark.parametrize("mode", ["int8", "int16x8", "dynamic", "float16"])
def test_a_friendly_student_converts_in_every_mode_to_the_intended_ops(digits, mode):
    """Squeezes without the runtime reshape; with `relu`, the conv's swish fused away (a LOGISTIC
    and a MUL), the gate's bottleneck swish, sigmoid and the softmax output kept."""
    teacher = squeeze_excite_model()
    calibration = digits.val.read(slice(8))
    as_is = tflite_ops(convert_to_tflite(teacher, mode, calibration))
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= set(as_is)
    kept = tflite_ops(convert_to_tflite(derive_student(teacher, 0.5, "teacher"), mode,
                                        calibration))
    assert not {"SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"} & set(kept)
    assert kept["LOGISTIC"] == 3  # swish in conv and se_reduce, the sigmoid gate
    relu = tflite_ops(convert_to_tflite(derive_student(teacher, 0.5, "teacher", "relu"), mode,
                                        calibration))
    assert relu["LOGISTIC"] == 2 and relu["SOFTMAX"] == 1
    assert relu["MUL"] == kept["MUL"] - 1  # the gate's multiply stays


def test_replaced_activations_keep_the_teachers_weights_and_interface(digits):
    """At width 1.0 with teacher init every weight is the teacher's; a layer that makes the
    model's output keeps its activation, even a swish one."""
    teacher = squeeze_excite_model()
    swish_out = keras.Model(teacher.input, keras.layers.Activation("swish", name="act")(
        teacher.output))
    student = derive_student(swish_out, 1.0, "teacher", "relu")
    for ours, theirs in zip(student.get_weights(), swish_out.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert student.get_layer("conv").get_config()["activation"] == "relu"
    assert student.get_layer("act").get_config()["activation"] == "swish"
    assert student.output_shape == swish_out.output_shape


def resnet_model(output_add: bool = False, channels: int = 8) -> keras.Model:
    """ResNet in small: a stem, three blocks with identity shortcuts, one that halves the
    resolution with a projection shortcut; with `output_add`, a last Add of x + tanh(x) makes
    the output."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="stem")(inputs)
    for block in (1, 2, 3):
        branch = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                     name=f"b{block}_1")(x)
        branch = keras.layers.Conv2D(channels, 3, padding="same", name=f"b{block}_2")(branch)
        x = keras.layers.Add(name=f"b{block}_add")([x, branch])
    branch = keras.layers.Conv2D(2 * channels, 3, strides=2, padding="same", name="down_1")(x)
    shortcut = keras.layers.Conv2D(2 * channels, 1, strides=2, name="down_shortcut")(x)
    x = keras.layers.Add(name="down_add")([shortcut, branch])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    if output_add:
        x = keras.layers.Add(name="out")([x, keras.layers.Activation("tanh", name="tanh")(x)])
    return keras.Model(inputs, x)


@pytest.mark.parametrize("mode", ["int8", "int16x8", "dynamic", "float16"])
def test_a_student_without_residual_blocks_converts_in_every_mode_to_the_intended_ops(
        digits, mode):
    """`half` leaves out the second of three identity blocks, `fewest` all three; the block
    that changes shape stays: its projection is no identity shortcut."""
    teacher = resnet_model()
    space = search_space(SearchConfig(), Params(), teacher)
    assert space["distill.blocks"] == ["all", "half", "fewest"]
    calibration = digits.val.read(slice(8))
    ops = {blocks: tflite_ops(convert_to_tflite(derive_student(teacher, 0.5, "teacher",
                                                               blocks=blocks), mode, calibration))
           for blocks in ("all", "half", "fewest")}
    assert [ops[blocks]["ADD"] for blocks in ops] == [4, 3, 1]
    assert [ops[blocks]["CONV_2D"] for blocks in ops] == [9, 7, 3]


def assert_teacher_weights(student: keras.Model, teacher: keras.Model) -> None:
    """Every layer of `student` holds the weights of `teacher`'s layer of its name."""
    for layer in student.layers:
        for ours, theirs in zip(layer.get_weights(), teacher.get_layer(layer.name).get_weights(),
                                strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_left_out_blocks_keep_the_other_layers_teacher_weights_and_the_interface():
    """At width 1.0 with teacher init every kept layer has the teacher's weights; an Add that
    makes the model's output is no block to leave out."""
    teacher = resnet_model(output_add=True)
    student = derive_student(teacher, 1.0, "teacher", blocks="half")
    assert "b2_1" not in {layer.name for layer in student.layers}
    assert_teacher_weights(student, teacher)
    assert list(identity_blocks(teacher)) == ["b1_add", "b2_add", "b3_add"]
    fewest = derive_student(teacher, 0.5, "teacher", blocks="fewest")
    assert fewest.get_layer("out").input_shape == teacher.get_layer("out").input_shape
    assert (fewest.input_shape, fewest.output_shape) == (teacher.input_shape, teacher.output_shape)
    # without identity shortcuts there is nothing to search
    assert block_choices(squeeze_excite_model()) == ["all"]


def mobile_model(aux_head: bool = False) -> keras.Model:
    """MobileNet in small, on 8x8 digits: a stride-2 stem, a depthwise-separable block, a
    downsampling as MobileNetV2 pads it (a ZeroPadding2D before a `valid` stride-2 depthwise
    convolution), and one more; with `aux_head`, a second output read at the block's
    resolution."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6",
                            name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    block = keras.layers.Conv2D(8, 1, activation="relu6", name="pw")(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="down_pad")(block)
    x = keras.layers.DepthwiseConv2D(3, strides=2, name="down_dw")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu6", name="down_pw")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="last_dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(x)
    if aux_head:
        outputs = [outputs, keras.layers.Conv2D(2, 1, name="aux")(block)]
    return keras.Model(inputs, outputs)


def op_outputs(tflite: bytes, op: str) -> list[list[int]]:
    """The output shapes of each `op` of a .tflite, in graph order."""
    interpreter = Interpreter(model_content=tflite)
    shapes = {tensor["index"]: tensor["shape"].tolist()
              for tensor in interpreter.get_tensor_details()}
    return [shapes[details["outputs"][0]] for details in interpreter._get_ops_details()
            if details["op_name"] == op]


@pytest.mark.parametrize("mode", ["int8", "int16x8", "dynamic", "float16"])
def test_a_student_that_downsamples_early_converts_in_every_mode_to_the_intended_ops(
        digits, mode):
    """`early`: the first depthwise convolution takes the next downsampling's stride (4x4 ->
    2x2), that one runs at stride 1 and its output stays 2x2, the last stays as it was: the
    same ops, the same interface."""
    teacher = mobile_model()
    assert search_space(SearchConfig(), Params(), teacher)["distill.downsample"] == [
        "keep", "early"]
    calibration = digits.val.read(slice(8))
    ops = {downsample: convert_to_tflite(derive_student(
        teacher, 0.5, "teacher", downsample=downsample), mode, calibration)
        for downsample in ("keep", "early")}
    assert [op_outputs(ops[downsample], "DEPTHWISE_CONV_2D") for downsample in ops] == [
        [[1, 4, 4, 4], [1, 2, 2, 4], [1, 1, 1, 8]], [[1, 2, 2, 4], [1, 2, 2, 4], [1, 1, 1, 8]]]
    assert tflite_ops(ops["keep"]) == tflite_ops(ops["early"])  # the converter folds the pad
    # in the ladder the rung that downsamples early follows its twin: as large, faster
    assert student_ladder(teacher, DistillConfig(), SparsifyConfig())[:2] == [
        Rung(0.5), Rung(0.5, downsample="early")]


def test_a_student_that_downsamples_early_keeps_the_teachers_weights_and_interface(digits):
    """At width 1.0 with teacher init every layer has the teacher's weights (the dropped pad has
    none); a teacher with an output read between the two strides keeps its strides, and asked
    to move them, it is refused; residual and Sequential teachers have no stride to move."""
    teacher = mobile_model()
    student = derive_student(teacher, 1.0, "teacher", downsample="early")
    assert "down_pad" not in {layer.name for layer in student.layers}
    assert_teacher_weights(student, teacher)
    assert (student.get_layer("dw").strides, student.get_layer("down_dw").strides) == (
        (2, 2), (1, 1))
    assert student.output_shape == teacher.output_shape
    assert student.predict(digits.val.read(slice(4)), verbose=0).shape == (4, 10)
    two_outputs = mobile_model(aux_head=True)
    assert downsample_choices(two_outputs) == ["keep"]
    with pytest.raises(InputError, match=r"distill\.downsample early: .*aux.*distill\.downsample: "
                                         r"keep"):
        derive_student(two_outputs, 0.5, "teacher", downsample="early")
    assert downsample_choices(resnet_model()) == downsample_choices(squeeze_excite_model()) == [
        "keep"]


def test_a_stride_that_cannot_move_falls_back_to_keep_saying_why_and_a_bug_is_raised(
        caplog, monkeypatch):
    """A layer that does not rebuild with the stride moved (a fixed Reshape between the two
    convolutions) means `early` does not apply: `keep` only, and the log says why. Any other
    error in moving it is a bug, raised as it is."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="taker")(x)
    x = keras.layers.Reshape((4, 4, 4), name="fixed")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="giver")(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    caplog.set_level(logging.INFO, logger="tasks")
    assert downsample_choices(keras.Model(inputs, outputs, name="fixed_reshape")) == ["keep"]
    assert ("fixed_reshape's stride cannot move early (Exception encountered when calling layer "
            '"fixed"') in caplog.text

    def broken(*args):
        raise AttributeError("'NoneType' object has no attribute 'get_layer'")

    monkeypatch.setattr("tasks.friendly._rebuilt", broken)
    with pytest.raises(AttributeError, match="get_layer"):
        downsample_choices(mobile_model())


def test_what_a_derived_student_changes_is_named_in_words(tmp_path):
    """The words the summary and the model card show."""
    def changes(teacher: keras.Model, cfg: DistillConfig, width: float = 0.5,
                blocks: StudentBlocks = "all") -> str | None:
        write_model(teacher, tmp_path / "teacher.h5")
        student = derive_student(teacher, width, "random", cfg.activations, blocks, cfg.downsample)
        write_model(student, tmp_path / "student.h5")
        return student_changes(cfg, tmp_path / "teacher.h5", tmp_path / "student.h5")

    named = {activations: changes(squeeze_excite_model(), DistillConfig(activations=activations))
             for activations in ("keep", "relu")}
    assert named == {"keep": "1 squeeze pooled with keepdims",
                     "relu": "1 squeeze pooled with keepdims, 1 swish/GELU activation as ReLU"}
    # read from the student: what distill.blocks auto chose
    assert (changes(resnet_model(), DistillConfig(), blocks="half")
            == "1 of 3 identity-shortcut residual blocks left out")
    assert changes(resnet_model(), DistillConfig(), blocks="fewest").startswith("3 of 3")
    assert (changes(mobile_model(), DistillConfig(downsample="early"))
            == "a downsampling moved up to dw")
    # width 1.0 derives no student: the sparsified teacher itself
    assert changes(squeeze_excite_model(), DistillConfig(width=1.0), 1.0) is None


def test_teacher_init_inherits_what_the_teacher_knows(digits, tiny_cnn):
    teacher = train_teacher(tiny_cnn, digits, ModelConfig(epochs=10, learning_rate=3e-3))

    def accuracy(model: keras.Model) -> float:
        return (model.predict(digits.val.read(), verbose=0).argmax(axis=1) == digits.val.labels).mean()

    assert accuracy(teacher) > 0.85
    # before any distillation; measured on seeds 0-2: teacher init >= 0.90, random <= 0.12
    assert accuracy(derive_student(teacher, width=0.75, init="teacher")) > 0.6
    assert accuracy(derive_student(teacher, width=0.75, init="random")) < 0.3  # chance: 0.1


def test_unknown_init_is_refused():
    with pytest.raises(InputError, match=r"distill\.init = 'pretrained'.*'teacher' or 'random'"):
        load_params(PARAMS_YAML, ["distill.init=pretrained"])


def test_loss_is_cross_entropy_at_alpha_one_and_kl_at_alpha_zero():
    labels = np.array([[0.0], [2.0]])
    teacher_logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.3, 1.5]])
    y_true = tf.constant(np.concatenate([labels, teacher_logits], axis=1), tf.float32)
    student_logits = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    hard = DistillationLoss("classification", temperature=2.0, alpha=1.0, activation="linear")
    expected_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels[:, 0], student_logits
    )
    assert float(hard(y_true, student_logits)) == pytest.approx(float(expected_ce), rel=1e-5)
    soft = DistillationLoss("classification", temperature=2.0, alpha=0.0, activation="linear")
    assert float(soft(y_true, student_logits)) > 0
    matched = tf.constant(teacher_logits, tf.float32)  # a student equal to the teacher
    assert float(soft(y_true, matched)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_student_learns_and_is_as_sparse_as_the_target(digits, trained_cnn):
    student = derive_student(trained_cnn, width=0.5, init="random")
    cfg = DistillConfig(epochs=4, learning_rate=3e-3)
    result = distill(trained_cnn, student, digits, cfg, SparsifyConfig(final_sparsity=0.7))
    assert overall_sparsity(result) == pytest.approx(0.7, abs=0.01)
    predicted = result.predict(digits.val.read(), verbose=0).argmax(axis=1)
    assert (predicted == digits.val.labels).mean() > 0.3  # chance is 0.1


def test_student_with_other_classes_is_refused(digits, trained_cnn):
    other = keras.Sequential([keras.Input(digits.input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(InputError, match="3 outputs, the teacher 10"):
        distill(trained_cnn, other, digits, DistillConfig(epochs=1), SparsifyConfig())


@pytest.mark.parametrize(("smallest", "chosen", "asked"), [
    (0.2, 0.25, [0.25, 0.125, 0.177]),  # within down to 0.25: three of five asked
    (0.1, 0.125, [0.25, 0.125]),        # all within: the narrowest
    (0.9, 0.5, [0.25, 0.354, 0.5]),     # none within: the widest, asked last
])
def test_auto_width_bisects_for_the_smallest_within(smallest, chosen, asked):
    ladder, seen = [Rung(width) for width in (0.5, 0.354, 0.25, 0.177, 0.125)], []

    def within(rung: Rung) -> bool:
        seen.append(rung.width)
        return rung.width >= smallest

    assert smallest_within(ladder, within) == Rung(chosen)
    assert seen == asked


def test_auto_width_finds_the_smallest_within_when_a_larger_student_with_fewer_blocks_is_not():
    """As ResNet50 measured: without its identity blocks a student needs width 0.354, with them
    all 0.125, so 0.177 `fewest` and 0.25 `half` are out though larger than 0.125 `all` (which
    bisection by size missed). Ladder by size: width squared times the share of blocks kept."""
    share, least = {"all": 1, "half": 0.66, "fewest": 0.35}, {"all": 0.125, "half": 0.354,
                                                               "fewest": 0.354}
    ladder = sorted(itertools.starmap(Rung, itertools.product(
        (0.5, 0.354, 0.25, 0.177, 0.125, 0.088), BLOCKS_KEPT)),
        key=lambda rung: -rung.width ** 2 * share[rung.blocks])
    seen = []

    def within(rung: Rung) -> bool:
        seen.append(rung[:2])
        return rung.width >= least[rung.blocks]

    assert ladder.index(Rung(0.25, "half")) < ladder.index(Rung(0.125, "all"))
    assert smallest_within(ladder, within) == Rung(0.125, "all")
    assert seen == [(0.177, "all"), (0.125, "half"), (0.125, "all"), (0.088, "all"),
                    (0.177, "fewest")]  # five of 18


def test_auto_blocks_ladder_orders_each_width_with_each_blocks_choice_by_deployed_size(digits):
    """ResNet in small at widths 0.5 and 0.354 (12 units: 0.25 would leave 3): the 0.5 student
    without its three identity blocks is smaller than the 0.354 one with them all. With every
    probe likely, the search keeps the last rung, derived without its blocks."""
    teacher = train_teacher(resnet_model(channels=12), digits, ModelConfig(epochs=1))
    ladder = student_ladder(teacher, DistillConfig(), SparsifyConfig())
    assert ladder == [Rung(0.5), Rung(0.5, "half"), Rung(0.354), Rung(0.354, "half"),
                      Rung(0.5, "fewest"), Rung(0.354, "fewest")]  # no stride to move
    assert student_ladder(teacher, DistillConfig(blocks="all"), SparsifyConfig()) == [
        Rung(0.5), Rung(0.354)]
    data = replace(digits, teacher_errors={"val": 3, "test": 3})
    rung, student, probes, _ = smallest_likely(  # 4-epoch probes learn to within 20 points
        teacher, data, DistillConfig(epochs=10), SparsifyConfig(enabled=False),
        GateConfig(max_accuracy_drop=0.2), seed=0)
    assert rung == Rung(0.354, "fewest") and list(probes) == [
        Rung(0.354), Rung(0.5, "fewest"), Rung(0.354, "fewest")]
    assert "b1_add" not in {layer.name for layer in student.layers}


def test_deployed_bytes_count_the_kernel_weights_pruning_keeps_and_bytes_per_channel():
    """A byte per kept kernel weight (the depthwise kernel is never pruned) and CHANNEL_BYTES per
    output channel: conv 3x3x1x4 (4 channels), depthwise 3x3x4 (4), dense 64x10 (10)."""
    def model() -> keras.Model:
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                                 keras.layers.DepthwiseConv2D(3), keras.layers.Flatten(),
                                 keras.layers.Dense(10)])

    channels = CHANNEL_BYTES * (4 + 4 + 10)
    assert deployed_bytes(model(), SparsifyConfig(enabled=False)) == 36 + 36 + 640 + channels
    uniform = SparsifyConfig(allocation="uniform", final_sparsity=0.75)
    assert deployed_bytes(model(), uniform) == pytest.approx(9 + 36 + 160 + channels)
    assert deployed_bytes(model(), SparsifyConfig(pattern="2:4")) == pytest.approx(
        36 + 36 + 320 + channels)  # the conv's input dimension, 1, is not a multiple of 4


def test_auto_width_distills_each_probe_and_keeps_the_narrowest_likely_to_pass(digits):
    keras.utils.set_random_seed(0)
    teacher = train_teacher(keras.Sequential([  # narrowest layer 16 wide: widths 0.5, 0.354, 0.25
        keras.Input(digits.input_shape), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]),
        digits, ModelConfig(epochs=1))
    data = replace(digits, teacher_errors={"val": 3, "test": 3})
    rung, student, probes, _ = smallest_likely(
        teacher, data, DistillConfig(epochs=1), SparsifyConfig(),
        GateConfig(max_accuracy_drop=0.2), seed=0)
    # both pass a 20-pt budget: one epoch from a one-epoch teacher brings them near it
    assert rung == Rung(0.25) and {probe.width for probe in probes} == {0.354, 0.25}
    assert student.layers[0].filters == 4
    assert all(probe.drop.n == len(digits.val.labels) for probe in probes.values())

    # certified on 60 test samples, which cannot certify 1 point: the widest alone, warned
    rung, _, probes, _ = smallest_likely(teacher, data, DistillConfig(epochs=1), SparsifyConfig(),
                                         GateConfig(require="certified"), seed=0)
    assert rung == Rung(0.5) and list(probes) == [Rung(0.5)]


def test_probes_train_a_third_of_the_epochs_and_the_chosen_one_trains_on_to_all(
        digits, caplog):
    keras.utils.set_random_seed(0)
    teacher = train_teacher(keras.Sequential([  # widths 0.5, 0.354, 0.25
        keras.Input(digits.input_shape), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]),
        digits, ModelConfig(epochs=1))
    data = replace(digits, teacher_errors={"val": 3, "test": 3})
    caplog.set_level(logging.INFO, logger="tasks")
    rung, student, probes, epochs = smallest_likely(
        teacher, data, DistillConfig(epochs=3), SparsifyConfig(),
        GateConfig(max_accuracy_drop=0.2), seed=0)
    # every student within a 20-pt budget: 0.354 then 0.25, one epoch each
    assert rung == Rung(0.25) and {
        probed.width: probe.epochs for probed, probe in probes.items()} == {0.354: 1, 0.25: 1}
    assert "0.354 likely after 1 of 3 epochs" in caplog.text
    assert "0.25 trained on to 3 epochs" in caplog.text and epochs == 1 + 3
    # the sparsity schedule spans all three epochs: only the chosen one's end reaches the target
    assert overall_sparsity(student) == pytest.approx(0.8, abs=0.01)
    assert student.layers[0].filters == 4


def test_auto_width_says_when_no_student_can_be_likely_to_pass(caplog):
    certified = decide_rule(GateConfig(require="certified"), 200, 4)
    assert cannot_narrow(certified, 144)  # 200 samples cannot certify 1 point: no student can
    assert "no student is likely to pass the gate (certified within 1.00 pt on 200" in caplog.text
    assert not cannot_narrow(decide_rule(GateConfig(), 360, 8), 144)  # auto: the estimate
    assert not cannot_narrow(decide_rule(GateConfig(require="certified"), 4000, 80), 144)


@pytest.mark.parametrize("augment", ["flip_crop", "mixup"])
def test_the_teacher_labels_the_very_view_the_student_trains_on(trained_cnn, digits, augment):
    batches = digits.train.batches(16)  # in order: the view is of the same samples
    views = consistent_views(batches, trained_cnn, augment)
    (clean, _), (x, packed) = next(iter(batches)), next(iter(views))
    assert x.shape == clean.shape and packed.shape == (16, 11)
    np.testing.assert_allclose(packed[:, 1:], np.log(trained_cnn(x).numpy() + 1e-7), atol=1e-5)
    assert set(np.unique(packed[:, 0])) <= set(range(10))
    assert not np.allclose(x, clean)  # a new view, not the inputs


def test_flip_crop_is_refused_for_samples_that_are_not_images():
    check_augment("flip_crop", (8, 8, 1))
    check_augment("mixup", (20,))
    with pytest.raises(InputError, match=r"distill.augment: flip_crop .* shape \(20,\); use mixup"):
        check_augment("flip_crop", (20,))


def test_distillation_on_augmented_views_learns(trained_cnn, digits):
    cfg = DistillConfig(epochs=3, augment="mixup", alpha=0.0)  # the teacher's logits alone
    student = distill(trained_cnn, derive_student(trained_cnn, 0.5, "teacher"), digits, cfg,
                      SparsifyConfig(enabled=False))
    predicted = student.predict(digits.val.read(), verbose=0).argmax(axis=1)
    assert np.mean(predicted == digits.val.labels) > 0.4  # chance: 0.1
