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
  convolution or dense layer before it (swish is a LOGISTIC and a MUL per use); not in
  squeeze-and-excitation bottlenecks. Not exact: the student learns with it. A transformer
  gains nothing: its int8 GELU is a table lookup, 1-2 % of a ViT student's time (ReLU: 1.00x,
  0.97-1.01; benchmarks/transformers.py), which goes to attention's BATCH_MATMULs and LayerNorm.
- `distill.blocks: half | fewest` (or `auto`, default: `distill.width: auto` tries each with
  each width): residual blocks whose shortcut is the identity (out = x + f(x))
  are left out, every other one or all of them: x passes straight on, and so does the time of
  f's three or so layers, which on a narrow student is mostly per-op overhead. Blocks that change
  shape (a projection or no shortcut) stay, so the student keeps the teacher's resolutions and
  stages; the kept layers keep their names and teacher weights (one layer of two, as DistilBERT
  initialises its student). A transformer layer's two blocks (attention, then the MLP whose
  shortcut is the attention's Add) go or stay together: `half` of a ViT keeps every other layer,
  not its attention without MLPs. Not exact: the student learns without them.
- `distill.downsample: early` (or `auto`, default: `distill.width: auto` tries each rung with
  and without it): the stride of the downsampling after the stem's moves up to the first
  spatial convolution after the stem that every path passes through (MobileNet's and
  EfficientNet's first depthwise one), so the few layers between run on a quarter of the
  positions and every later one at the resolution it had. The stride is the student's to
  place: the weights keep their shapes, the model's outputs theirs. A narrow mobile student
  spends a large share of its time at the stem's resolution (MobileNetV2 0.5 at width 0.177
  without its identity blocks, untrained: 9.9 -> 7.1 us, int8, 1 thread). Not exact: those
  layers see a coarser map. Moving the *last* downsampling instead (5.7 us) left every later
  stage coarser, and cost that trained student 3.8 points on 32x32 digits (docs/models.md).
  Residual teachers whose first blocks all have shortcuts (ResNet) and Sequential ones keep
  their strides.

Measured (docs/models.md): an EfficientNetB0 student at width 0.5, 32×32×3, int8, 1 thread:
squeezes 16 % faster, both 24 %. Hard-sigmoid gates instead of sigmoid ones were 26 % *slower*
(LiteRT's int8 LOGISTIC is a table lookup): not offered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import tf_keras as keras

from tasks.channels import GLOBAL_POOLING, gate_layers, inbound_entries, inbound_layers
from tasks.config import DistillConfig, StudentActivations, StudentBlocks, StudentDownsample
from tasks.models import read_model

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
SWISH_LIKE = frozenset({"swish", "silu", "gelu"})
Rewrite = Callable[[keras.layers.Layer, dict], keras.layers.Layer]
SPATIAL_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                        keras.layers.SeparableConv2D)


def friendly_rewrites(model: keras.Model, activations: StudentActivations) -> dict[str, Rewrite]:
    """By layer name, how the student builds each layer a transform changes, from the layer and
    its (narrowed) config; the layers that make the model's outputs are left as they are, and
    so are the activations of squeeze-and-excitation bottlenecks (`gate_layers`): a handful of
    units on a 1x1 map cost no time, and as ReLU they can all die (measured: EfficientNetB0 at
    width 0.125, a 4-unit bottleneck zero on every calibration sample, whose int8 scale of 1e-8
    XNNPACK refuses to run)."""
    outputs = {tensor.node.layer.name for tensor in model.outputs}
    rewrites: dict[str, Rewrite] = {}
    for pooling, reshape in squeezes(model).items():
        rewrites[pooling] = _keep_dims
        rewrites[reshape] = _identity
    if activations == "relu":
        kept = outputs | gate_layers(model)
        for layer in model.layers:
            if layer.name not in kept and layer.get_config().get("activation") in SWISH_LIKE:
                rewrites[layer.name] = _relu
    return rewrites


def activation_choices(model: keras.Model, configured: StudentActivations,
                       ) -> list[StudentActivations]:
    """The search's distill.activations for `model`: `keep` and `relu` when it has swish or GELU
    layers to replace, else the configured one (the two would be the same student)."""
    replaceable = any(rewrite is _relu for rewrite in friendly_rewrites(model, "relu").values())
    return ["keep", "relu"] if replaceable else [configured]


# distill.blocks from most blocks kept to fewest: each keeps every block the next one keeps
BLOCKS_KEPT: tuple[StudentBlocks, ...] = ("all", "half", "fewest")


def block_choices(model: keras.Model) -> list[StudentBlocks]:
    """The distill.blocks that derive different students from `model`, most blocks first: `all`,
    `half` and `fewest` when it has blocks with identity shortcuts to leave out (one such block:
    `half` keeps it, so only `all` and `fewest`), else `all`. A transformer layer's two blocks
    count as one (`block_groups`)."""
    shortcuts = len(block_groups(model))
    if not shortcuts:
        return ["all"]
    return list(BLOCKS_KEPT) if shortcuts > 1 else ["all", "fewest"]


def identity_blocks(model: keras.Model) -> dict[str, str]:
    """{Add layer: its shortcut} for each residual block out = x + f(x), in graph order: an Add
    of two inputs one of which (x, the shortcut) feeds the other. Adds that make the model's
    outputs are not among them (the interface stays the teacher's)."""
    return {add: branches[0] for add, branches in _residual_branches(model).items()}


def block_groups(model: keras.Model) -> list[list[str]]:
    """The identity blocks' Adds (`identity_blocks`, in graph order) grouped as distill.blocks
    leaves them out: a transformer layer's attention block (its branch holds a
    MultiHeadAttention) with the block after it when that one does not attend (its MLP, pre- or
    post-norm); every other block alone."""
    groups: list[list[str]] = []
    after_attention = False  # the last group is an attention block alone
    for add, (_, branch) in _residual_branches(model).items():
        attends = any(isinstance(model.get_layer(name), keras.layers.MultiHeadAttention)
                      for name in branch)
        if after_attention and not attends:
            groups[-1].append(add)
        else:
            groups.append([add])
        after_attention = attends
    return groups


def _residual_branches(model: keras.Model) -> dict[str, tuple[str, set[str]]]:
    """{Add: (its shortcut, the layers of its branch only)} for each identity block, as
    `identity_blocks` finds them."""
    if isinstance(model, keras.Sequential):
        return {}
    inbound = inbound_layers(model)
    outputs = {tensor.node.layer.name for tensor in model.outputs}
    found = {}
    for layer in model.layers:
        before = inbound[layer.name]
        if isinstance(layer, keras.layers.Add) and len(before) == 2 and layer.name not in outputs:
            for shortcut, branch in (before, before[::-1]):
                if shortcut in _ancestors(branch, inbound):
                    found[layer.name] = shortcut, (_ancestors(branch, inbound) | {branch}) - (
                        _ancestors(shortcut, inbound) | {shortcut})
                    break
    return found


def left_out_blocks(model: keras.Model, blocks: StudentBlocks) -> dict[str, str]:
    """The identity blocks (`identity_blocks`) a student with distill.blocks `blocks` leaves out:
    none (`all`; `auto` too, but in distill.width `auto`'s ladder, which tries the others:
    tasks/students.py `student_ladder`), every other group of them (`block_groups`: the second,
    fourth, ...) or all."""
    found, groups = identity_blocks(model), block_groups(model)
    chosen = {"all": [], "auto": [], "half": groups[1::2], "fewest": groups}[blocks]
    return {add: found[add] for group in chosen for add in group}


def without_blocks(model: keras.Model, blocks: StudentBlocks) -> keras.Model:
    """`model` without the residual blocks `blocks` leaves out (`left_out_blocks`): each such Add
    reads as its shortcut, and the layers only its branch used are gone. The other layers keep
    their names and weights. `model` itself when nothing is left out."""
    left_out = left_out_blocks(model, blocks)
    if not left_out:
        return model

    def kept(name: str) -> str:
        while name in left_out:  # a left-out block's shortcut may be another left-out block
            name = left_out[name]
        return name

    return _rebuilt(model, model.get_config(), kept)


# distill.downsample from the teacher's strides to the earliest: each student runs at least as
# many positions as the next
DOWNSAMPLE_ORDER: tuple[StudentDownsample, ...] = ("keep", "early")


def downsample_choices(model: keras.Model) -> list[StudentDownsample]:
    """The distill.downsample that derive different students from `model`: `keep` and `early`
    when it has a stride to move (`early_downsampling`) and the student builds with the
    teacher's output shapes, else `keep`. Keras says a layer does not rebuild with the strides
    moved (a fixed Reshape, a Dense after a Flatten) with a ValueError, as `downsampled_early`
    does an output shape that changes: only those mean `early` does not apply."""
    try:
        moved = downsampled_early(model, "early")
    except ValueError as exc:
        log.info("distill.downsample: keep only: %s's stride cannot move early (%s)",
                 model.name, str(exc).strip().splitlines()[0])
        return ["keep"]
    return list(DOWNSAMPLE_ORDER) if moved is not model else ["keep"]


def early_downsampling(model: keras.Model) -> tuple[str, list[str]] | None:
    """(the layer that takes a stride, the layers that give it up) for distill.downsample
    `early`, or None when `model` has none: the taker is the first stride-1 2D convolution with
    a kernel wider than 1 after the first stride-2 one (the stem) that every path from the
    inputs to the outputs passes through (a 1x1 one would only drop positions; one inside a
    residual block would halve one path of two); the givers, the next downsampling after it:
    each stride-2 convolution with the largest output of those after it (a projection block
    has two)."""
    if isinstance(model, keras.Sequential):
        return None
    layers = [layer for layer in model.layers if isinstance(layer, SPATIAL_CONVOLUTIONS)
              and len(layer.input_shape) == 4]
    strided = [layer for layer in layers if tuple(layer.strides) == (2, 2)]
    if not strided:
        return None
    inbound = inbound_layers(model)
    taker = next((layer for layer in layers[layers.index(strided[0]) + 1:]
                  if tuple(layer.strides) == (1, 1) and max(layer.kernel_size) > 1
                  and _on_every_path(model, layer.name, inbound)), None)
    later = [layer for layer in strided if taker and layers.index(layer) > layers.index(taker)]
    if not later:
        return None
    largest = max(math.prod(layer.output_shape[1:3]) for layer in later)
    return taker.name, [layer.name for layer in later
                        if math.prod(layer.output_shape[1:3]) == largest]


def downsampled_early(model: keras.Model, downsample: StudentDownsample) -> keras.Model:
    """`model` with the downsampling after its stem's moved early (`early_downsampling`) for
    `early`, else `model` itself. The layers giving up the stride pad `same`; a ZeroPadding2D
    that only fed them (MobileNetV2's and EfficientNetB0's, before a `valid` stride-2
    convolution) is dropped, as a stride-1 `same` convolution keeps the size it had. The other
    layers keep their names and weights. Raises ValueError when the shape of a model's output
    or of the givers' would change (an output read between the two layers)."""
    found = early_downsampling(model) if downsample == "early" else None
    if not found:
        return model
    taker, givers = found
    inbound, readers = inbound_layers(model), _readers(model)
    pads = {before: inbound[before][0] for giver in givers for before in inbound[giver]
            if isinstance(model.get_layer(before), keras.layers.ZeroPadding2D)
            and set(readers[before]) <= set(givers)}
    config = model.get_config()
    for spec in config["layers"]:
        if spec["name"] == taker:
            spec["config"]["strides"] = (2, 2)
        elif spec["name"] in givers:
            spec["config"] |= {"strides": (1, 1), "padding": "same"}
    moved = _rebuilt(model, config, lambda name: pads.get(name, name))
    for name in (*givers, *model.output_names):
        if moved.get_layer(name).output_shape != model.get_layer(name).output_shape:
            raise ValueError(f"moving {givers[0]}'s stride to {taker} changes the shape of "
                             f"{name}'s output")
    return moved


def student_changes(cfg: DistillConfig, teacher: Path, student: Path) -> str | None:
    """What the distill stage's `student` file, derived from the `teacher` file, changed in its
    architecture, in words; None when it derived none (distill off, a student file, width 1.0:
    the sparse model) or changed nothing."""
    if not cfg.enabled or cfg.student or cfg.width == 1.0:
        return None
    return describe_rewrites(read_model(teacher), read_model(student), cfg.activations)


def describe_rewrites(teacher: keras.Model, student: keras.Model,
                      activations: StudentActivations) -> str | None:
    """`5 of 10 identity-shortcut residual blocks left out, 3 squeezes pooled with keepdims, 5
    swish/GELU activations as ReLU, a downsampling moved up to conv2`: what `student`, derived
    from `teacher` with `activations`, changes (None: nothing). Read from the student's layers
    (they keep the teacher's names), so it names what distill.blocks and distill.downsample
    `auto` chose."""
    kept = {layer.name for layer in student.layers}
    blocks = identity_blocks(teacher)
    left_out = sum(add not in kept for add in blocks)
    rewrites = [rewrite for name, rewrite in friendly_rewrites(teacher, activations).items()
                if name in kept]
    counts = [("squeeze", "pooled with keepdims", rewrites.count(_keep_dims)),
              ("swish/GELU activation", "as ReLU", rewrites.count(_relu))]
    changes = [f"{n} {noun}{'s' * (n > 1)} {how}" for noun, how, n in counts if n]
    if left_out:
        changes.insert(0, f"{left_out} of {len(blocks)} identity-shortcut residual blocks "
                          "left out")
    moved = [layer.name for layer in student.layers if isinstance(layer, SPATIAL_CONVOLUTIONS)
             and layer.strides != teacher.get_layer(layer.name).strides]
    if moved:
        changes.append(f"a downsampling moved up to {moved[0]}")
    return ", ".join(changes) or None


def squeezes(model: keras.Model) -> dict[str, str]:
    """{pooling layer: Reshape} for each global pooling layer (without keepdims) read only by a
    Reshape to (1, ..., 1, channels)."""
    if isinstance(model, keras.Sequential):
        return {}  # a Sequential model's squeeze would feed no gate: nothing to gain
    readers = _readers(model)
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


def _ancestors(name: str, inbound: dict[str, list[str]]) -> set[str]:
    """The layers whose outputs reach `name`'s."""
    found: set[str] = set()
    reached = list(inbound.get(name, []))
    while reached:
        before = reached.pop()
        if before not in found:
            found.add(before)
            reached += inbound.get(before, [])
    return found


def _rebuilt(model: keras.Model, config: dict, reads: Callable[[str], str]) -> keras.Model:
    """`model`'s functional `config` (edited) with each layer reading `reads(name)` for each
    layer `name` it read, without the layers no output reaches then; built with `model`'s
    weights, by layer name."""
    for spec in config["layers"]:
        for entry in inbound_entries(spec):
            entry[0] = reads(entry[0])
    specs = {spec["name"]: spec for spec in config["layers"]}
    used: set[str] = set()
    reached = [name for name, *_ in config["output_layers"]]
    while reached:
        name = reached.pop()
        if name not in used:
            used.add(name)
            reached += [entry[0] for entry in inbound_entries(specs[name])]
    config["layers"] = [spec for spec in config["layers"] if spec["name"] in used]
    rebuilt = keras.Model.from_config(config)
    for layer in rebuilt.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def _readers(model: keras.Model) -> dict[str, list[str]]:
    """{layer: the layers that read its output}."""
    readers: dict[str, list[str]] = {}
    for name, before in inbound_layers(model).items():
        for source in before:
            readers.setdefault(source, []).append(name)
    return readers


def _on_every_path(model: keras.Model, name: str, inbound: dict[str, list[str]]) -> bool:
    """Whether every path from `model`'s inputs to its outputs passes through layer `name`."""
    inputs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.InputLayer)}
    found: set[str] = set()
    reached = [tensor.node.layer.name for tensor in model.outputs]
    while reached:
        before = reached.pop()
        if before != name and before not in found:
            found.add(before)
            reached += inbound.get(before, [])
    return not inputs & found
