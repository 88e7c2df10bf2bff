"""Model files as stored: their format, the Keras that wrote them, and the code they would run.

Nothing here deserialises a model: the stored config is read as JSON (an HDF5 attribute, a zip
member, a protobuf field), so a file can be refused before any of its code could run.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import tf_keras as keras
from tf_keras.protobuf import saved_metadata_pb2

from tasks.errors import InputError

Format = Literal["keras", "h5", "savedmodel"]

# Layers tf_keras builds itself without being importable from tf_keras.layers.
BUILT_IN_CLASSES = {"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda"}
KERAS_MODULES = ("keras", "tf_keras")
NESTED_LAYER_KEYS = ("layers", "layer", "backward_layer")  # models and wrappers (Bidirectional)
KERAS_MEMBERS = {"metadata.json", "config.json"}  # what a .keras zip holds besides its weights


@dataclass(frozen=True)
class ModelSource:
    """A model file as the flow records it: what it is and whether it was rebuilt in tf_keras.

    `keras_version` is what the file says wrote it (None: a SavedModel, which does not say);
    `converted` is True for Keras 3 files, which `read_model` rebuilds layer by layer in tf_keras.
    """

    path: Path
    format: Format
    keras_version: str | None
    converted: bool


@dataclass(frozen=True)
class StoredModel:
    """A model file's source and its model config (JSON), read without deserialising anything."""

    source: ModelSource
    config: dict[str, Any]


def model_source(path: str | Path) -> ModelSource:
    """What `path` holds and which Keras wrote it (for a file `read_model` has accepted)."""
    return stored_model(Path(path)).source


def stored_model(path: Path) -> StoredModel:
    """Read the format, Keras version and model config of a .keras/.h5 file or SavedModel dir."""
    if path.is_dir():
        fmt, version, config = "savedmodel", None, _savedmodel_config(path)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            missing = sorted(KERAS_MEMBERS - set(archive.namelist()))
            if missing:  # ValueError, as for any other file that holds no model
                raise ValueError(f"the zip holds no {' and no '.join(missing)} (no .keras file)")
            version = json.loads(archive.read("metadata.json")).get("keras_version")
            fmt, config = "keras", json.loads(archive.read("config.json"))
    elif h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            if "model_config" not in file.attrs:
                raise ValueError("the HDF5 file holds no model config (only weights?)")
            version = _text(file.attrs.get("keras_version"))
            fmt, config = "h5", json.loads(_text(file.attrs["model_config"]))
    else:
        raise ValueError("neither a .keras zip, an HDF5 file nor a SavedModel directory")
    converted = version is not None and int(version.split(".")[0]) >= 3
    return StoredModel(ModelSource(path, fmt, version, converted), config)


def refuse_code(stored: StoredModel, key: str) -> None:
    """Raise InputError if loading the model would run code stored in (or named by) the file.

    Refused: Lambda layers; layers and objects that are not Keras built-ins (custom classes,
    whose module Keras imports; registered names); Python functions stored as bytecode (a lambda
    given as an activation). The one fix is the `model.trust_code` setting.
    """
    for layer in _layers(stored.config):
        problem = _code_in_layer(layer)
        if problem:
            raise code_refused(key, stored.source.path, problem)


def code_refused(key: str, path: Path, problem: str) -> InputError:
    """The refusal of a file that holds code: what it holds and the one setting that allows it."""
    return InputError(
        f"{key}: {path} has {problem}, whose Python code would run when the model loads, so it "
        "is refused. If you trust this file, set model.trust_code: true (--set model.trust_code=true)"
    )


def _code_in_layer(layer: dict[str, Any]) -> str | None:
    """What in this layer (or model) would run code, or None."""
    class_name = layer.get("class_name")
    name = repr(layer.get("name") or layer.get("config", {}).get("name", "?"))
    if class_name == "Lambda":
        return f"a Lambda layer {name}"
    if _is_custom(layer) or (layer.get("module") is None and not _is_built_in_layer(class_name)):
        return f"a custom layer {name} ({class_name})"
    own_config = {k: v for k, v in layer.get("config", {}).items() if k not in NESTED_LAYER_KEYS}
    found = next(_code_objects(own_config), None)
    return f"{found} in layer {name}" if found else None


def _code_objects(value: Any) -> Iterator[str]:
    """Describe every stored Python function or custom object inside a layer's config."""
    if isinstance(value, list):
        for item in value:
            yield from _code_objects(item)
    elif isinstance(value, dict):
        if _is_lambda(value):
            yield "a Python lambda"
        elif "class_name" in value and _is_custom(value):
            yield f"a custom object ({value['class_name']})"
        for item in value.values():
            yield from _code_objects(item)


def _is_lambda(obj: dict[str, Any]) -> bool:
    """A function stored as bytecode: Keras 3's `__lambda__` object, or the older
    `{"value": [code, defaults, closure]}` that tf_keras (and Keras 3) write for a lambda activation."""
    legacy = obj.keys() == {"value"} and isinstance(obj["value"], list)
    return legacy or obj.get("class_name") == "__lambda__"


def _is_custom(obj: dict[str, Any]) -> bool:
    """Not a Keras built-in: imported from another module, or registered under a custom name."""
    module = obj.get("module")
    registered = obj.get("registered_name")
    foreign_module = module is not None and not module.startswith(KERAS_MODULES)
    return foreign_module or registered not in (None, obj.get("class_name"))


def _is_built_in_layer(class_name: Any) -> bool:
    """For configs that name no module (legacy HDF5; classes defined in a script's __main__): a
    layer class tf_keras itself provides."""
    layer_class = getattr(keras.layers, str(class_name), None)
    return class_name in BUILT_IN_CLASSES or isinstance(layer_class, type)


def _layers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The model itself and every layer in it, through nested models and wrappers."""
    yield obj
    config = obj.get("config")
    if isinstance(config, dict):
        for key in NESTED_LAYER_KEYS:
            nested = config.get(key) or []
            for layer in [nested] if isinstance(nested, dict) else nested:
                yield from _layers(layer)


def _savedmodel_config(path: Path) -> dict[str, Any]:
    """The root object's metadata in keras_metadata.pb: class name and config of the model.

    The root suffices: a Functional/Sequential root lists every layer in its config, and any other
    root class is a custom model (refused). SavedModels without keras_metadata.pb (TF < 2.5, or
    not written by Keras) are not read.
    """
    metadata_file = path / "keras_metadata.pb"
    if not metadata_file.is_file():
        raise ValueError("the directory has no keras_metadata.pb (no SavedModel written by Keras)")
    metadata = saved_metadata_pb2.SavedMetadata.FromString(metadata_file.read_bytes())
    root = next(node for node in metadata.nodes if node.node_path == "root")
    return json.loads(root.metadata)


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
