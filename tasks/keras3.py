"""Keras 3 models rebuilt in tf_keras (Keras 2), the only Keras tfmot works with.

Keras 3 (`import keras` is Keras 3 even with TF_USE_LEGACY_KERAS=1) reads the file. Each layer is
then rebuilt in tf_keras from its config, wired by walking the Keras 3 functional graph, and given
the Keras 3 layer's weights; the two models must agree on a batch of inputs, or the file is refused.

Config differences handled (Keras 3 -> tf_keras): InputLayer `batch_shape` -> `batch_input_shape`;
dtype policies stored as objects -> their name; keys tf_keras does not know (e.g. initializers'
`input_axes`, Dense's `quantization_config`) are dropped, at the layer and inside initializer,
regularizer and constraint configs. Of the recorded call kwargs, `training` (Keras 3 records False
in its symbolic call; tf_keras would freeze Dropout and BatchNorm to it) and None values
(BatchNormalization's `mask`) are dropped.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import tf_keras

from tasks.errors import InputError
from tasks.flatten import TOLERANCE, output_difference
from tasks.model_files import ModelSource

LAYER_KEYS = {"name", "trainable", "dtype", "batch_input_shape"}  # every tf_keras layer takes these
RENAMED_KEYS = {"batch_shape": "batch_input_shape"}
OBJECT_MODULES: dict[str, ModuleType] = {
    "_initializer": tf_keras.initializers,
    "_regularizer": tf_keras.regularizers,
    "_constraint": tf_keras.constraints,
}

Graph = dict[str, Any]  # a Keras 3 model config: its layers' entries and the graph's ends
NESTED = ("Functional", "Sequential", "Model")  # a model called as a layer


def read_keras3(source: ModelSource, who: str, trust_code: bool) -> tf_keras.Model:
    """Load a Keras 3 file and return the same model in tf_keras, checked to agree within 1e-5.

    `who` names the config entry in errors. `trust_code` loads with safe_mode=False, so Lambda
    layers load too (rebuilt as tf_keras Lambdas around the loaded function).
    """
    import keras  # Keras 3: imported here because it takes seconds and only these files need it

    original = keras.saving.load_model(source.path, compile=False, safe_mode=not trust_code)
    model = _model(original.get_config(), original, source, who)
    _copy_weights(original, model, source, who)
    _check_agreement(original, model, source, who)
    return model


def _model(config: Graph, original: Any, source: ModelSource, who: str) -> tf_keras.Model:
    """The tf_keras twin of the Keras 3 model `original` whose config is `config`; a model it
    calls (a keras.applications backbone, a Sequential block) becomes a tf_keras model called
    alike (tasks/flatten.py then flattens it)."""
    layers = {entry["config"]["name"]: _layer(entry, original, source, who)
              for entry in config["layers"]}
    return _wire(config, layers)


def _copy_weights(original: Any, model: tf_keras.Model, source: ModelSource, who: str) -> None:
    """Each layer's weights to its twin, layer by layer into called models (Keras 3 and tf_keras
    order a model's weights differently: per layer, and trainable first)."""
    for layer in original.layers:
        twin = model.get_layer(layer.name)
        if isinstance(twin, tf_keras.Model):
            _copy_weights(layer, twin, source, who)
            continue
        try:
            twin.set_weights(layer.get_weights())
        except ValueError as exc:
            problem = f"has weights that do not fit its tf_keras twin ({exc})"
            raise _refusal(source, who, layer.name, type(layer).__name__, problem) from exc


def _refusal(source: ModelSource, who: str, name: str, class_name: str, problem: str) -> InputError:
    return InputError(
        f"{who}: {source.path} (Keras {source.keras_version}): layer {name!r} ({class_name}) "
        f"{problem}; re-save the model with tf_keras, or drop layer {name!r}"
    )


def _layer(
    entry: dict[str, Any], original: Any, source: ModelSource, who: str
) -> tf_keras.layers.Layer:
    """The tf_keras layer of the same class, built from the Keras 3 layer's stored config."""
    class_name, name = entry["class_name"], entry["config"]["name"]
    if class_name in NESTED and "layers" in entry["config"]:
        return _model(entry["config"], original.get_layer(name), source, who)
    cls = getattr(tf_keras.layers, class_name, None)
    if entry.get("module") != "keras.layers" or not isinstance(cls, type):
        raise _refusal(source, who, name, class_name, "has no tf_keras equivalent")
    if class_name == "Lambda":  # its function is code, not config: wrap the loaded one
        loaded = original.get_layer(name)
        return tf_keras.layers.Lambda(loaded.function, arguments=loaded.arguments, name=name)
    try:
        return cls.from_config(_layer_config(cls, entry["config"]))
    except (TypeError, ValueError) as exc:
        problem = f"cannot be built in tf_keras from its config ({exc})"
        raise _refusal(source, who, name, class_name, problem) from exc


def _layer_config(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The Keras 3 config, renamed and filtered to what the tf_keras class takes."""
    accepted = _parameters(cls) | LAYER_KEYS
    renamed = {RENAMED_KEYS.get(key, key): value for key, value in config.items()}
    return {key: _value(key, value) for key, value in renamed.items() if key in accepted}


def _value(key: str, value: Any) -> Any:
    """A config value as tf_keras reads it: dtype policies by name, known objects' known keys."""
    if key == "dtype" and isinstance(value, dict):
        return value["config"]["name"]
    module = next((m for suffix, m in OBJECT_MODULES.items() if key.endswith(suffix)), None)
    if module is None or not isinstance(value, dict):
        return value
    cls = getattr(module, value["class_name"], None)
    if not isinstance(cls, type):
        raise ValueError(f"tf_keras has no {key} {value['class_name']}")
    own = {k: v for k, v in value["config"].items() if k in _parameters(cls)}
    return {"class_name": value["class_name"], "config": own}


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def _wire(config: Graph, layers: dict[str, tf_keras.layers.Layer]) -> tf_keras.Model:
    """Call the tf_keras layers as the Keras 3 graph's nodes call theirs (Keras 3 node format:
    `{"args": [...], "kwargs": {...}}`, tensors as `__keras_tensor__` with `keras_history`
    [layer, node index, tensor index]). A Sequential is its layers in order."""
    if "input_layers" not in config:
        return tf_keras.Sequential(list(layers.values()), name=config["name"])
    nodes = {entry["config"]["name"]: entry["inbound_nodes"] for entry in config["layers"]}
    results: dict[tuple[str, int], Any] = {}  # (layer, node index) -> what that call returned

    def tensor(name: str, index: int, tensor_index: int) -> Any:
        if (name, index) not in results:
            layer = layers[name]
            if isinstance(layer, tf_keras.layers.InputLayer):
                results[name, index] = layer.output
            else:
                node = nodes[name][index]
                kwargs = {k: v for k, v in node["kwargs"].items() if k != "training" and v is not None}
                results[name, index] = layer(*resolve(node["args"]), **resolve(kwargs))
        result = results[name, index]
        return result[tensor_index] if isinstance(result, (list, tuple)) else result

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return tensor(*value["config"]["keras_history"])
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(item) for item in value)
        if isinstance(value, dict):
            return {key: resolve(item) for key, item in value.items()}
        return value

    def ends(spec: list) -> Any:
        found = [tensor(*ref) for ref in ([spec] if isinstance(spec[0], str) else spec)]
        return found[0] if len(found) == 1 else found

    inputs, outputs = ends(config["input_layers"]), ends(config["output_layers"])
    return tf_keras.Model(inputs, outputs, name=config["name"])


def _check_agreement(original: Any, model: tf_keras.Model, source: ModelSource, who: str) -> None:
    """Both models must give the same outputs (within TOLERANCE) on a fixed random batch."""
    difference = output_difference(original, model)
    if not difference <= TOLERANCE:  # also catches NaN
        raise InputError(
            f"{who}: {source.path} (Keras {source.keras_version}) rebuilt in tf_keras gives other "
            f"outputs than the original (max abs difference {difference:.3g} > {TOLERANCE:g}); "
            "re-save the model with tf_keras"
        )
