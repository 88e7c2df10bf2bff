"""Deriving a student from the teacher: the same graph, narrower, made quantization-friendly
(tasks/friendly.py), its weights the teacher's strongest channels (tasks/channels.py); and the
ladder of students distill.width `auto` chooses from (tasks/auto_width.py), ordered by their
deployed size."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import tf_keras as keras

from tasks.attention import narrowed_attention
from tasks.channels import (
    copy_top_channels,
    narrowed_units,
    output_layer,
    teacher_widths,
    width_key,
)
from tasks.config import (
    DistillConfig,
    SparsifyConfig,
    StudentActivations,
    StudentBlocks,
    StudentDownsample,
    StudentInit,
)
from tasks.errors import InputError
from tasks.friendly import (
    block_choices,
    downsample_choices,
    downsampled_early,
    friendly_rewrites,
    without_blocks,
)
from tasks.models import kernels
from tasks.sparsify import check_prunable, final_sparsities


def derive_student(source: keras.Model, width: float, init: StudentInit,
                   activations: StudentActivations = "keep", blocks: StudentBlocks = "all",
                   downsample: StudentDownsample = "keep") -> keras.Model:
    """`source`'s architecture with every layer but the output `width` times as wide, made
    quantization-friendly (tasks/friendly.py: squeezes keep their dims; `activations`; the
    residual `blocks` left out; a stride moved early by `downsample`).

    `filters`, `units` and `output_dim` are scaled (tasks/channels.py `narrowed_units`); the
    output layer (the last layer that has one) keeps its size so the student predicts the same
    classes. Attention keeps `width` of its heads (tasks/attention.py `narrowed_attention`).
    Weights are freshly initialised (`random`) or `source`'s own, sliced to each layer's
    channels with the largest L1 norms and attention's strongest heads (`teacher`).

    A Reshape that keeps the channels last (squeeze-and-excitation's (C,) -> (1, 1, C), a ViT's
    patches (H, W, C) -> (H * W, C) or (-1, C)) has a fixed target shape that would not fit the
    narrower student: a first build lets it infer its channels (-1, the other sizes the
    teacher's), a second fixes them. -1 alone leaves them unknown in the traced graph (its
    batch is dynamic), and the TFLite converter refuses the Conv2D after it as a flex op.
    """
    try:
        source = without_blocks(source, blocks)
    except Exception as exc:  # a layer whose config does not rebuild without the blocks
        raise InputError(f"distill.blocks {blocks}: cannot leave out {source.name}'s residual "
                         f"blocks ({exc}); use distill.blocks: all") from exc
    try:
        source = downsampled_early(source, downsample)
    except Exception as exc:  # a layer whose config does not rebuild with the strides moved
        raise InputError(f"distill.downsample {downsample}: cannot move a stride of "
                         f"{source.name} ({exc}); use distill.downsample: keep") from exc
    output = output_layer(source)
    rewrites = friendly_rewrites(source, activations)
    reshapes = {layer.name: None for layer in source.layers
                if keeps_channels_last(layer) and layer.name not in rewrites}

    def narrowed(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        key = width_key(layer)
        if key and layer is not output:
            config[key] = narrowed_units(config[key], width)
        elif isinstance(layer, keras.layers.MultiHeadAttention):  # from_config: no weights, warned
            return type(layer)(**narrowed_attention(config, width, narrowed_units))
        elif layer.name in reshapes:
            config["target_shape"] = reshapes[layer.name] or (*layer.output_shape[1:-1], -1)
        rewrite = rewrites.get(layer.name)
        return rewrite(layer, config) if rewrite else type(layer).from_config(config)

    try:
        student = keras.models.clone_model(source, clone_function=narrowed)
        if reshapes:
            reshapes.update({name: student.get_layer(name).output_shape[1:] for name in reshapes})
            student = keras.models.clone_model(source, clone_function=narrowed)
    except Exception as exc:  # shape errors from fixed reshapes, layers that refuse new sizes
        raise InputError(
            f"distill.width: cannot derive a {width}-wide student from {source.name} ({exc}); "
            "use distill.width: 1.0 or give a student model file as distill.student"
        ) from exc
    if init == "teacher":
        copy_top_channels(source, student)
    return student


def keeps_channels_last(layer: keras.layers.Layer) -> bool:
    """A Reshape whose target shape ends in its input's channels, as a fixed size."""
    return (isinstance(layer, keras.layers.Reshape)
            and layer.target_shape[-1] == layer.input_shape[-1])


class Rung(NamedTuple):
    """A student distill.width `auto` may derive."""

    width: float
    blocks: StudentBlocks = "all"
    downsample: StudentDownsample = "keep"


# Bytes per output channel of a layer with a kernel in an int8 .tflite, after gzip: a float32
# kernel scale, an int32 bias and its float32 scale (per-channel quantization; the int64 zero
# points are zeros, which gzip folds away)
CHANNEL_BYTES = 12


def student_ladder(teacher: keras.Model, cfg: DistillConfig,
                   sparsify_cfg: SparsifyConfig) -> list[Rung]:
    """distill.width `auto`'s students, largest first as deployed (`deployed_bytes`): each of the
    teacher's widths (tasks/channels.py `teacher_widths`) with distill.blocks and
    distill.downsample, or for `auto` with each choice that derives a different student
    (tasks/friendly.py `block_choices`, `downsample_choices`). A narrower student with more
    blocks may be larger than a wider one with fewer (ResNet50: width 0.5 without its identity
    blocks sits between 0.354 and 0.25 with them). Moving a stride changes no weight: the rung
    that downsamples early follows its twin (as large, faster)."""
    ladder = _rungs(teacher, cfg)
    if len({rung.blocks for rung in ladder}) == 1:
        return ladder
    sizes = {(rung.width, rung.blocks): deployed_bytes(derive_student(
        teacher, rung.width, "random", cfg.activations, rung.blocks), sparsify_cfg)
        for rung in ladder if rung.downsample == "keep"}
    return sorted(ladder, key=lambda rung: -sizes[rung.width, rung.blocks])  # stable: twins


def deployed_bytes(student: keras.Model, sparsify_cfg: SparsifyConfig) -> float:
    """About the gzip bytes of `student`'s int8 .tflite once distill has pruned it on
    `sparsify_cfg`: a byte per kernel weight pruning keeps, plus CHANNEL_BYTES per output channel.
    Gotcha: as `final_sparsities`, it changes `student`'s layers: give it a throwaway model.

    Parameters alone misorder students of different depths: MobileNetV2 0.5 at width 0.177
    keeping half its blocks (26.6 k params) is larger deployed than at 0.25 keeping none (34.0 k):
    29.4 vs 27.5 KiB gzip, measured untrained (tasks/estimate.py): more layers, more channels, and
    small layers stay denser (`size_aware`). This estimate ordered its 15 rungs as measured but
    for one pair 1 % apart, without converting any."""
    sparsities = final_sparsities(student, sparsify_cfg, check_prunable(
        student, sparsify_cfg)) if sparsify_cfg.enabled else {}
    total = 0.0
    for name, kernel in kernels(student).items():  # "conv/kernel": its weights
        layer, weight = name.split("/")
        outputs = math.prod(kernel.shape[-2:]) if weight == "depthwise_kernel" else kernel.shape[-1]
        total += kernel.size * (1 - sparsities.get(layer, 0.0)) + CHANNEL_BYTES * outputs
    return total


def smallest_student(teacher: keras.Model, cfg: DistillConfig) -> keras.Model:
    """The smallest student distill derives from `teacher` (untrained), for the pre-flight
    checks: distill.width, or for `auto` the ladder's last."""
    rung = _rungs(teacher, cfg)[-1] if cfg.width == "auto" else Rung(
        cfg.width, cfg.blocks, cfg.downsample)
    return derive_student(teacher, rung.width, cfg.init, cfg.activations, rung.blocks,
                          rung.downsample)


def _rungs(teacher: keras.Model, cfg: DistillConfig) -> list[Rung]:
    """`student_ladder`'s rungs, widest first, most blocks first within a width, the teacher's
    strides first within blocks: the last is the smallest."""
    blocks = block_choices(teacher) if cfg.blocks == "auto" else [cfg.blocks]
    downsample = downsample_choices(teacher) if cfg.downsample == "auto" else [cfg.downsample]
    return [Rung(*rung) for rung in itertools.product(
        teacher_widths(teacher, "distill.width"), blocks, downsample)]


def check_student(student: keras.Model, teacher: keras.Model) -> None:
    """Student and teacher must take the same inputs and predict the same classes."""
    if student.output_shape[-1] != teacher.output_shape[-1]:
        raise InputError(
            f"distill.student: the student has {student.output_shape[-1]} outputs, the teacher "
            f"{teacher.output_shape[-1]}; they must predict the same classes"
        )
    if student.input_shape[1:] != teacher.input_shape[1:]:
        raise InputError(
            f"distill.student: the student takes inputs of shape {student.input_shape[1:]}, the "
            f"teacher {teacher.input_shape[1:]}; they must take the same samples"
        )
