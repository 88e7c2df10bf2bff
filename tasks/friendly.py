"""Quantization-friendly students: what a student derived from its teacher (`derive_student`)
changes in the teacher's architecture so that its int8 .tflite runs faster. The student learns
from the teacher's outputs, so it need not copy its layers where they quantize badly; it keeps
every layer's name and weights (teacher-channel init works as before) and the layers that make
the model's outputs, so its interface is the teacher's.

- Always, as it is exact: a squeeze (a global pooling layer read only by a Reshape to
  (1, ..., 1, C), as in squeeze-and-excitation blocks) pools with `keepdims` instead, and the
  Reshape becomes an Identity. The same values, without the runtime reshape Keras traces (SHAPE,
  STRIDED_SLICE, PACK and RESHAPE per block in the .tflite).
- `distill.activations: relu`: swish (SiLU) and GELU become ReLU, which int8 fuses into the
  convolution or dense layer before it (swish is a LOGISTIC and a MUL per use). Not exact: the
  student learns with it.

Measured (docs/models.md): an EfficientNetB0 student at width 0.5, 32×32×3, int8, 1 thread:
squeezes 16 % faster, both 24 %. Hard-sigmoid gates instead of sigmoid ones were 26 % *slower*
(LiteRT's int8 LOGISTIC is a table lookup): not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tf_keras as keras

from tasks.channels import GLOBAL_POOLING, inbound_layers
from tasks.config import DistillConfig, StudentActivations
from tasks.models import read_model

SWISH_LIKE = frozenset({"swish", "silu", "gelu"})
Rewrite = Callable[[keras.layers.Layer, dict], keras.layers.Layer]


def friendly_rewrites(model: keras.Model, activations: StudentActivations) -> dict[str, Rewrite]:
    """By layer name, how the student builds each layer a transform changes, from the layer and
    its (narrowed) config; the layers that make the model's outputs are left as they are."""
    outputs = {tensor.node.layer.name for tensor in model.outputs}
    rewrites: dict[str, Rewrite] = {}
    for pooling, reshape in squeezes(model).items():
        rewrites[pooling] = _keep_dims
        rewrites[reshape] = _identity
    if activations == "relu":
        for layer in model.layers:
            if layer.name not in outputs and layer.get_config().get("activation") in SWISH_LIKE:
                rewrites[layer.name] = _relu
    return rewrites


def activation_choices(model: keras.Model, configured: StudentActivations,
                       ) -> list[StudentActivations]:
    """The search's distill.activations for `model`: `keep` and `relu` when it has swish or GELU
    layers to replace, else the configured one (the two would be the same student)."""
    replaceable = any(rewrite is _relu for rewrite in friendly_rewrites(model, "relu").values())
    return ["keep", "relu"] if replaceable else [configured]


def student_changes(cfg: DistillConfig, teacher: Path) -> str | None:
    """What the distill stage's derived student changed in the `teacher` file's architecture, in
    words; None when it derived none (distill off, a student file, width 1.0: the sparse model)
    or changed nothing."""
    if not cfg.enabled or cfg.student or cfg.width == 1.0:
        return None
    return describe_rewrites(read_model(teacher), cfg.activations)


def describe_rewrites(model: keras.Model, activations: StudentActivations) -> str | None:
    """`3 squeezes pooled with keepdims, 5 swish/GELU activations as ReLU`: what a student derived
    from `model` changes (None: nothing)."""
    rewrites = list(friendly_rewrites(model, activations).values())
    counts = [("squeeze", "pooled with keepdims", rewrites.count(_keep_dims)),
              ("swish/GELU activation", "as ReLU", rewrites.count(_relu))]
    return ", ".join(f"{n} {noun}{'s' * (n > 1)} {how}" for noun, how, n in counts if n) or None


def squeezes(model: keras.Model) -> dict[str, str]:
    """{pooling layer: Reshape} for each global pooling layer (without keepdims) read only by a
    Reshape to (1, ..., 1, channels)."""
    if isinstance(model, keras.Sequential):
        return {}  # a Sequential model's squeeze would feed no gate: nothing to gain
    readers: dict[str, list[str]] = {}
    for name, before in inbound_layers(model).items():
        for source in before:
            readers.setdefault(source, []).append(name)
    found = {}
    for layer in model.layers:
        if not isinstance(layer, GLOBAL_POOLING) or layer.keepdims:
            continue
        (reader, *others) = readers.get(layer.name, [None])
        shape = getattr(model.get_layer(reader), "target_shape", None) if reader else None
        if (not others and shape and len(shape) == len(layer.input_shape) - 1
                and all(size == 1 for size in shape[:-1])):
            found[layer.name] = reader
    return found


def _keep_dims(layer: keras.layers.Layer, config: dict) -> keras.layers.Layer:
    return type(layer).from_config(config | {"keepdims": True})


def _identity(layer: keras.layers.Layer, config: dict) -> keras.layers.Layer:
    return keras.layers.Identity(name=config["name"])


def _relu(layer: keras.layers.Layer, config: dict) -> keras.layers.Layer:
    return type(layer).from_config(config | {"activation": "relu"})
