"""Initialise a narrower student from its teacher: every layer keeps the teacher's most important
channels, with their weights.

Importance is the L1 norm of a channel's kernel slice (Li et al., 2017, "Pruning Filters for
Efficient ConvNets"). The kept channels are followed through the graph so that every weight is
sliced on both sides: a layer's own output channels and the input channels of the layers that read
them (BatchNorm and depthwise kernels follow their input; a Dense after Flatten reads every spatial
position of each kept channel). Layers whose outputs meet in an elementwise merge (a residual
`Add`) must keep the same channels: they are ranked together, by their summed L1 norms.

Recurrent layers (LSTM, GRU, SimpleRNN) keep units: their kernel, recurrent kernel and bias hold
one block of `units` columns per gate, and a kept unit keeps its column in every gate (and its
row of the recurrent kernel), so the gates of each kept unit stay those the teacher trained. An
Embedding keeps output dimensions (`output_dim`) like a layer keeps channels.

Transformers: LayerNormalization keeps its input's channels (gamma, beta); MultiHeadAttention
keeps heads and writes its query's channels, which join its output projection to the residual
stream's group (tasks/attention.py); a TensorFlow op on tensors (`x + positions`) is a merge when
elementwise; integer and boolean tensors (token or position ids, shapes, masks) carry no channels.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import tf_keras as keras

from tasks.attention import attention_inputs, output_norms, sliced_attention, strongest
from tasks.errors import InputError

Kind = Literal["input", "width", "output", "merge", "concat", "flatten", "depthwise", "attention",
               "same"]
# How each weight is sliced: (axis, which indices). "mid" are a separable conv's depthwise outputs.
SLICES: dict[str, tuple[tuple[int, str], ...]] = {
    "kernel": ((-2, "in"), (-1, "out")),
    "recurrent_kernel": ((-2, "units"), (-1, "out")),
    "embeddings": ((-1, "out"),),
    "depthwise_kernel": ((-2, "in"),),
    "pointwise_kernel": ((-2, "mid"), (-1, "out")),
    "bias": ((-1, "out"),),
    **{name: ((-1, "out"),) for name in ("gamma", "beta", "moving_mean", "moving_variance",
                                         "mean", "variance")},  # BatchNorm, Normalization
    "count": (),  # Normalization's sample count: one number
}
# Gates of each recurrent layer whose units are followed (blocks of `units` columns per weight)
GATES = {keras.layers.LSTM: 4, keras.layers.GRU: 3, keras.layers.SimpleRNN: 1}
WIDTH_KEYS = ("filters", "units", "output_dim")
MODEL_INPUT = ""  # the inbound name of a Sequential model's first layer
MIN_UNITS = 4  # the narrowest layer a derived width may leave
WIDTH_STEP = math.sqrt(2)
FIRST_WIDTH = 0.5
GLOBAL_POOLING = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                  keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
                  keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)
MERGES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
          keras.layers.Maximum, keras.layers.Minimum)
# The elementwise TensorFlow ops a functional model calls on two tensors (`x + y`: TFOpLambda)
ELEMENTWISE_OPS = frozenset({"__operators__.add", "math.add", "math.subtract", "math.multiply",
                             "math.maximum", "math.minimum"})


def width_key(layer: keras.layers.Layer) -> str | None:
    """`filters`, `units` or `output_dim` (an Embedding): the config key that sets how many
    channels a layer outputs."""
    config = layer.get_config()
    return next((key for key in WIDTH_KEYS if isinstance(config.get(key), int)), None)


def output_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer with a width: it keeps its size so the student predicts the same classes."""
    return [layer for layer in model.layers if width_key(layer)][-1]


def narrowed_units(units: int, width: float) -> int:
    """A layer's size in a `width`-wide student: never below MIN_UNITS (a layer of MIN_UNITS or
    fewer keeps its size)."""
    return max(min(units, MIN_UNITS), round(units * width))


def teacher_widths(teacher: keras.Model, setting: str) -> list[float]:
    """Widths from 0.5 down by factors of sqrt(2), as long as the teacher's layers keep MIN_UNITS
    units, all but its narrowest quarter (`bounding_units`): relative to this teacher, not to a
    data set. `setting` names the key that asked for them, for the error when there are none."""
    output, gates = output_layer(teacher), gate_layers(teacher)
    units = [layer.get_config()[key] for layer in teacher.layers
             if (key := width_key(layer)) and layer is not output and layer.name not in gates]
    if not units:
        raise InputError(f"{setting}: the teacher has no layer with filters or units besides "
                         f"its output, so no narrower student can be derived; set {setting}")
    bound = bounding_units(units)
    widths = []
    width = FIRST_WIDTH
    while round(bound * width) >= MIN_UNITS:
        widths.append(round(width, 3))
        width /= WIDTH_STEP
    if not widths:
        raise InputError(f"{setting}: the teacher's narrow layers have {bound} units, so no width "
                         f"of at most {FIRST_WIDTH} keeps {MIN_UNITS}; set {setting}")
    return widths


def bounding_units(units: list[int]) -> int:
    """The layer size that bounds a teacher's widths: the narrowest but for the narrowest quarter
    of its layers (the narrowest, when it has fewer than four). Those few narrow layers are held
    at MIN_UNITS (`narrowed_units`) rather than keep the whole student wide: bounded by its
    narrowest tenth, MobileNetV2 0.5's sixteen-unit layers held its students at width 0.25, where
    every probe was likely (93x smaller); its quarter, 32 units, allows 0.125 (0.177 chosen,
    133x). The output layer and squeeze-and-excitation bottlenecks (`gate_layers`: a handful of
    units in EfficientNet) are not among `units`."""
    return sorted(units)[len(units) // 4]


def gate_layers(model: keras.Model) -> set[str]:
    """The width layers of squeeze-and-excitation gates: between a global pooling layer and an
    elementwise Multiply, with no other merge between. (MobileNetV3's head conv, pooled and then
    hard-swished by a Multiply, counts too: harmless, as it is wide.)"""
    if isinstance(model, keras.Sequential):
        return set()
    inbound, layers = inbound_layers(model), {layer.name: layer for layer in model.layers}
    pooled: dict[str, bool] = {}  # memo of `from_pooling`: a graph's paths can be many

    def from_pooling(name: str) -> bool:
        """Whether the output of `name` comes from a global pooling layer with no merge between."""
        if name not in pooled:
            layer = layers.get(name)
            pooled[name] = layer is not None and (isinstance(layer, GLOBAL_POOLING) or (
                not _is_merge(layer) and any(from_pooling(before) for before in inbound[name])))
        return pooled[name]

    gates: set[str] = set()

    def mark(name: str) -> None:
        layer = layers[name]
        if isinstance(layer, GLOBAL_POOLING) or not from_pooling(name) or name in gates:
            return
        if width_key(layer):
            gates.add(name)
        for before in inbound[name]:
            mark(before)

    for layer in model.layers:
        if isinstance(layer, keras.layers.Multiply):
            for before in inbound[layer.name]:
                mark(before)
    return gates


def copy_top_channels(source: keras.Model, student: keras.Model) -> None:
    """Set `student`'s weights to `source`'s, sliced to the channels with the largest L1 norms.

    `student` is `source`'s architecture with narrower layers of the same names (`derive_student`).
    """
    inbound = inbound_layers(source)
    output = output_layer(source)
    kinds = {layer.name: _kind(layer, output) for layer in source.layers}
    kept = _kept_channels(source, student, inbound, kinds)
    attention = {} if isinstance(source, keras.Sequential) else {
        spec["name"]: attention_inputs(spec) for spec in source.get_config()["layers"]
        if kinds[spec["name"]] == "attention"}
    outputs = {MODEL_INPUT: np.arange(source.input_shape[-1])}
    for layer in source.layers:
        inputs = [outputs[name] for name in inbound[layer.name]]
        outputs[layer.name] = _output_channels(layer, kinds[layer.name], inputs, kept)
        if layer.weights:
            student_layer = student.get_layer(layer.name)
            if layer.name in attention:
                weights = sliced_attention(layer, student_layer, {
                    role: outputs[name] for role, name in attention[layer.name].items()})
            else:
                weights = _sliced_weights(layer, inputs[0], outputs[layer.name])
            try:
                student_layer.set_weights(weights)
            except ValueError as exc:  # the student's shapes disagree with the channels followed
                reason = f"its sliced weights do not fit the student ({exc})"
                raise _unsupported(layer, reason) from exc


def _sliced_weights(layer: keras.layers.Layer, inputs: np.ndarray,
                    units: np.ndarray) -> list[np.ndarray]:
    """`layer`'s weights sliced (SLICES) to the channels of its (first) input and output."""
    indices = {"in": inputs, "units": units, "out": _gated(units, layer),
               "mid": _repeat(inputs, _depth_multiplier(layer))}
    return [_sliced(weight, indices) for weight in layer.weights]


def inbound_layers(model: keras.Model) -> dict[str, list[str]]:
    """Each layer's input layers by name (Sequential: the one before; the first: MODEL_INPUT)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        return {name: [before] for before, name in zip([MODEL_INPUT, *names], names)}
    inbound = {}
    for spec in model.get_config()["layers"]:
        if len(spec["inbound_nodes"]) > 1:
            layer = model.get_layer(spec["name"])
            raise _unsupported(layer, "it is shared (called more than once)")
        inbound[spec["name"]] = [entry[0] for entry in inbound_entries(spec)]
    return inbound


def inbound_entries(spec: dict) -> list[list]:
    """The [layer, node, tensor, kwargs] entries of a functional model config's layer `spec`, and
    the [layer, node, tensor] of each tensor among their keyword arguments (a MultiHeadAttention's
    value and key, the `y` of a TFOpLambda `x + y`): a node is a list of entries, or one such
    entry (a TFOpLambda, as in MobileNetV3)."""
    entries = [entry for node in spec["inbound_nodes"]
               for entry in ([node] if isinstance(node[0], str) else node)]
    return entries + [argument for entry in entries for argument in entry[3].values()
                      if _is_tensor(argument)]


def _is_tensor(argument) -> bool:
    """Whether a keyword argument in a functional config is a tensor: [layer, node, tensor]."""
    return (isinstance(argument, list) and len(argument) == 3 and isinstance(argument[0], str)
            and all(isinstance(index, int) for index in argument[1:]))


def _kind(layer: keras.layers.Layer, output: keras.layers.Layer) -> Kind:
    """How `layer` maps the channels of its inputs to those of its output. Integer and boolean
    outputs (ids, shapes, masks) carry no channels: as a model input's, all of them stay."""
    if isinstance(layer, keras.Model):
        raise _unsupported(layer, "it is a nested model")
    if isinstance(layer, keras.layers.MultiHeadAttention):
        if layer.get_config()["output_shape"] is not None:
            raise _unsupported(layer, "its output_shape is set, so its outputs are not its "
                                      "query's channels")
        if isinstance(layer.output, (list, tuple)):
            raise _unsupported(layer, "it returns its attention scores too")
        return "attention"
    if isinstance(layer, keras.layers.InputLayer):
        return "input"
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                          keras.layers.Conv3DTranspose)):
        raise _unsupported(layer, "its kernel stores output channels before input channels")
    if unknown := [w.name for w in layer.weights if _short_name(w) not in SLICES]:
        raise _unsupported(layer, f"it has weights {unknown} with no known channel axis")
    recurrent = any(_short_name(w) == "recurrent_kernel" for w in layer.weights)
    if recurrent and type(layer) not in GATES:  # Bidirectional, ConvLSTM2D, a custom cell
        raise _unsupported(layer, "only LSTM, GRU and SimpleRNN layers are followed unit by unit")
    if not _floating(layer):
        return "input"
    if width_key(layer):
        return "output" if layer is output else "width"
    if isinstance(layer, keras.layers.Concatenate):
        if layer.axis not in (-1, len(layer.output_shape) - 1):
            raise _unsupported(layer, "it concatenates on an axis other than the channels")
        return "concat"
    if isinstance(layer, keras.layers.Flatten):
        return "flatten"
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if _is_merge(layer):
        return "merge"
    if layer.input_shape[-1] != layer.output_shape[-1]:
        raise _unsupported(layer, "its output has a different number of channels than its input")
    return "same"


def _kept_channels(
    source: keras.Model, student: keras.Model, inbound: dict[str, list[str]], kinds: dict[str, Kind]
) -> dict[str, np.ndarray]:
    """The source channels each width layer keeps, ascending, as many as its student layer has."""
    groups = _merged_groups(source, inbound, kinds)
    importance: dict[str, np.ndarray] = {}
    for name, group in groups.items():
        importance[group] = importance.get(group, 0) + _l1_norms(source.get_layer(name))
    kept = {}
    for group, norms in importance.items():
        size = student.get_layer(group).get_config()[width_key(student.get_layer(group))]
        kept[group] = strongest(norms, size)
    return {name: kept[group] for name, group in groups.items()}


def _merged_groups(
    model: keras.Model, inbound: dict[str, list[str]], kinds: dict[str, Kind]
) -> dict[str, str]:
    """Each width layer's group: the layer itself, or one representative for all the width layers
    whose channels meet in an elementwise merge (through BatchNorm, activations, pooling...)."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    carried: dict[str, str | None] = {MODEL_INPUT: None}  # the width layer an output's channels are
    for layer in model.layers:
        kind, sources = kinds[layer.name], [carried[name] for name in inbound[layer.name]]
        if kind == "width":
            parent[layer.name] = carried[layer.name] = layer.name
        elif kind == "attention":  # writes its query's channels: ranked with them, if any
            carried[layer.name] = sources[0]
            if sources[0] is not None:
                parent[layer.name] = root(sources[0])
        elif kind in ("same", "depthwise") or (kind == "merge" and None not in sources):
            for other in sources[1:]:
                parent[root(other)] = root(sources[0])
            carried[layer.name] = sources[0]
        else:
            carried[layer.name] = None
    return {name: root(name) for name in parent}


def _output_channels(
    layer: keras.layers.Layer, kind: Kind, inputs: list[np.ndarray], kept: dict[str, np.ndarray]
) -> np.ndarray:
    """The source channels of `layer`'s output that the student keeps, in the student's order."""
    if kind == "input" or kind == "output":
        return np.arange(layer.output.shape[-1] if layer.output.shape.rank else 0)
    if kind == "width":
        return kept[layer.name]
    if kind == "depthwise":
        return _repeat(inputs[0], _depth_multiplier(layer))
    if kind == "flatten":  # channels last: position p of channel c lands at p * channels + c
        positions = int(np.prod(layer.input_shape[1:-1]))
        channels = layer.input_shape[-1]
        return (np.arange(positions)[:, None] * channels + inputs[0][None, :]).ravel()
    if kind == "concat":
        offsets = np.cumsum([0, *(shape[-1] for shape in layer.input_shape[:-1])])
        return np.concatenate([channels + offset for channels, offset in zip(inputs, offsets)])
    if kind == "merge" and any(not np.array_equal(inputs[0], other) for other in inputs[1:]):
        raise _unsupported(layer, "its inputs keep different channels")
    return inputs[0]


def _l1_norms(layer: keras.layers.Layer) -> np.ndarray:
    """L1 norm of each output channel's kernel slice (a separable conv's pointwise kernel, an
    Embedding's vectors; a recurrent unit's input kernel columns over all its gates; attention's
    output projection)."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return output_norms(layer)
    weights = {_short_name(w): w.numpy() for w in layer.weights}
    kernel = next(weights[name] for name in ("pointwise_kernel", "kernel", "embeddings")
                  if name in weights)
    gates = GATES.get(type(layer), 1)
    return np.abs(kernel).reshape(-1, gates, kernel.shape[-1] // gates).sum(axis=(0, 1))


def _gated(units: np.ndarray, layer: keras.layers.Layer) -> np.ndarray:
    """The weight columns of `units` (source indices): one per gate of a recurrent layer, gate by
    gate as Keras stores them (LSTM: i, f, c, o); the units themselves for other layers."""
    gates = GATES.get(type(layer), 1)
    if gates == 1:
        return units
    return (np.arange(gates)[:, None] * layer.units + units[None, :]).ravel()


def _sliced(weight: np.ndarray, indices: dict[str, np.ndarray]) -> np.ndarray:
    value = weight.numpy()
    for axis, which in SLICES[_short_name(weight)]:
        value = np.take(value, indices[which], axis=axis)
    return value


def _repeat(channels: np.ndarray, multiplier: int) -> np.ndarray:
    """Depthwise outputs of `channels`: input channel c makes outputs c * m ... c * m + m - 1."""
    return (channels[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()


def _depth_multiplier(layer: keras.layers.Layer) -> int:
    return getattr(layer, "depth_multiplier", 1)


def _floating(layer: keras.layers.Layer) -> bool:
    """Whether `layer`'s output is floating point (or several outputs)."""
    dtype = getattr(layer.output, "dtype", None)
    return dtype is None or dtype.is_floating


def _is_merge(layer: keras.layers.Layer) -> bool:
    """Elementwise merges: MERGES layers, ELEMENTWISE_OPS."""
    return isinstance(layer, MERGES) or getattr(layer, "symbol", None) in ELEMENTWISE_OPS


def _short_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]  # "block1/conv/kernel:0" -> "kernel"


def _unsupported(layer: keras.layers.Layer, reason: str) -> InputError:
    return InputError(
        f"distill.init: teacher cannot copy channels through {layer.name} "
        f"({type(layer).__name__}): {reason}; use distill.init: random"
    )
