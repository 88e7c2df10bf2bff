"""`params.yaml` + `--set KEY=VALUE` overrides -> one validated `Params`, or an error naming the key.

The file's `stack:` section configures `shrinkflow up` (servers, schedule); it is not a run
parameter, so it is read separately (flows/stack/config.py `load_stack`). Its `inputs:` section
is derived from the run parameters for DVC (flows/workspace/versioning.py) and is not read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tasks.config import CREDENTIALS_IN_URL, Params
from tasks.errors import InputError

DEFAULT_PARAMS = Path("params.yaml")
STACK = "stack"
INPUTS = "inputs"
SECTIONS = {
    name for name, field in Params.model_fields.items() if issubclass(field.annotation, BaseModel)
}


def load_params(path: Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Params:
    """Read `path` (optional when it is the default), apply overrides, validate once."""
    raw = read_with_overrides(path, overrides)
    raw.pop(STACK, None)
    raw.pop(INPUTS, None)
    return validate_params(raw)


def validate_params(raw: Any) -> Params:
    return validated(Params, raw)


def validated(model: type[BaseModel], raw: Any, section: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(_describe(e, model, section) for e in exc.errors())
        raise InputError(f"invalid params:\n{problems}") from None


def dump_params(params: Params) -> str:
    """The resolved config as YAML, every default spelled out."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the keys `--set`, MLflow and DVC all use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_with_overrides(path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    raw = _read_yaml(path)
    for override in overrides:
        _apply(raw, override)
    return raw


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        if path == DEFAULT_PARAMS:
            return {}
        raise InputError(f"--params: {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:  # an empty file, or only comments
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{path} must be a mapping of sections (seed, data, model, ...)")
    # A section whose keys are all commented out reads as None: it means "all defaults".
    return {key: {} if value is None and key in SECTIONS else value for key, value in raw.items()}


def _apply(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise InputError(f"--set {override!r}: expected KEY=VALUE, e.g. distill.temperature=2")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(text) if text else None


def _describe(error: dict[str, Any], model: type[BaseModel], section: str) -> str:
    key = ".".join(str(part) for part in (section, *error["loc"]) if part != "") or "params"
    if error["type"] == "extra_forbidden":
        known = ", ".join(_known_keys(model, error["loc"][:-1]))
        return f"  {key}: unknown key; allowed here: {known}"
    message = error["msg"].removeprefix("Value error, ")
    hidden = isinstance(error["input"], dict) or error["type"] == CREDENTIALS_IN_URL
    given = "" if hidden else f" = {error['input']!r}"
    return f"  {key}{given}: {message}"


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
