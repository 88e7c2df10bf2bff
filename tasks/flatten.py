"""Nested models flattened into one graph of layers: a model that calls another model (the
transfer-learning shape `x = base(x)` with a keras.applications backbone, a Sequential block inside
a functional model, at any depth) becomes one functional model of the same layers with the same
weights, so every stage (teacher-channel init, pruning, the friendly transforms, quantization) sees
layers it knows. Checked: the flat model's outputs equal the nested one's within TOLERANCE.

How: the outer graph is called again on fresh inputs, node by node, each inner model's own graph
in place of its call; the result is cloned (each layer one inbound node again, as a model read
from a file has) and given the weights. Gotchas:
- a nested call's `training` argument (`base(x, training=False)`, the keras.io guide's way to keep
  a frozen backbone's BatchNorm in inference) is dropped: inference is the default, and training a
  student of it should update its statistics;
- every layer comes out trainable: a frozen backbone was how the teacher was trained, not part of
  what it computes, and a student derived from it must learn;
- an inner layer whose name is taken in the outer graph is renamed `<inner model>_<layer>`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tasks.errors import InputError

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)

TOLERANCE = 1e-5  # largest absolute output difference allowed between nested and flat
CHECK_SAMPLES = 8
FREE_DIM = 32  # size given to unknown (None) input dimensions in the agreement check


def nested_models(model: keras.Model) -> list[str]:
    """The names of the models `model` calls, at any depth."""
    return [name for layer in model.layers if isinstance(layer, keras.Model)
            for name in (layer.name, *nested_models(layer))]


def flattened(model: keras.Model, who: str) -> keras.Model:
    """`model` with every model it calls inlined; `model` itself when it calls none. `who` names
    the config entry in errors and the log."""
    inner = nested_models(model)
    if not inner:
        return model
    try:
        # by shape and dtype: an input made from a type spec does not survive a config round
        # trip (the friendly transforms rebuild from config) into a file tf_keras reads back
        inputs = [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                              name=tensor.name.split(":")[0]) for tensor in model.inputs]
        taken = {layer.name: id(layer) for layer in model.layers
                 if not isinstance(layer, keras.Model)}
        outputs = _called(model, inputs, taken)
        flat = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
        clone = keras.models.clone_model(flat)
        clone.set_weights(flat.get_weights())
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # Keras refusing the graph
        raise InputError(f"{who}: cannot flatten the model(s) {', '.join(inner)} that "
                         f"{model.name} calls into one graph ({exc}); save the model with its "
                         "layers in one functional graph") from exc
    for layer in clone.layers:
        layer.trainable = True
    _check_agreement(model, clone, who)
    log.info("%s: %s calls %s: flattened into one graph of %d layers (outputs agree within %g)",
             who, model.name, ", ".join(inner), len(clone.layers), TOLERANCE)
    return clone


def _called(model: keras.Model, inputs: list[Any], taken: dict[str, int]) -> list[Any]:
    """`model`'s graph called on `inputs` (one tensor per model input), an inner model's graph in
    place of each call to it; returns one tensor per model output. `taken`: the layer names in
    use, each with its layer's id (a layer called twice keeps its name)."""
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(f"{model.name} is a subclassed model, not a graph of layers")
    tensors = {id(tensor): new for tensor, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # inputs first
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = tf.nest.map_structure(  # the old graph's tensors, kept alive by it
                lambda value: tensors.get(id(value), value), (node.call_args, node.call_kwargs))
            layer = node.layer
            if isinstance(layer, keras.Model):  # `training` and other call kwargs dropped
                outputs = _called(layer, tf.nest.flatten(args[0]), taken)
                outputs = outputs if len(outputs) > 1 else outputs[0]
            else:
                if taken.setdefault(layer.name, id(layer)) != id(layer):  # the module's gotchas
                    layer._name = f"{model.name}_{layer.name}"
                    taken[layer.name] = id(layer)
                outputs = layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                tensors[id(old)] = new
    return [tensors[id(tensor)] for tensor in model.outputs]


def _check_agreement(nested: keras.Model, flat: keras.Model, who: str) -> None:
    difference = output_difference(nested, flat)
    if not difference <= TOLERANCE:  # also catches NaN
        raise InputError(f"{who}: {nested.name} flattened into one graph gives other outputs than "
                         f"as nested (max abs difference {difference:.3g} > {TOLERANCE:g}); save "
                         "the model with its layers in one functional graph")


def output_difference(reference: Any, model: keras.Model) -> float:
    """The largest absolute difference between the outputs of `reference` (a tf_keras or Keras 3
    model) and `model` on a fixed random batch of `model`'s input shapes (NaN where either is)."""
    rng = np.random.default_rng(0)
    batch = [rng.random((CHECK_SAMPLES, *(dim or FREE_DIM for dim in spec.shape[1:])))
             .astype(spec.dtype.as_numpy_dtype) for spec in model.inputs]
    x = batch[0] if len(batch) == 1 else batch
    pairs = zip(tf.nest.flatten(reference(x, training=False)),
                tf.nest.flatten(model(x, training=False)))
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
