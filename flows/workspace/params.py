"""`params.yaml` + `--set KEY=VALUE` overrides -> one validated `Params`, or an error naming the key.

The file's `stack:` section configures `shrinkflow up` (servers, schedule); it is not a run
parameter: every command reads the whole file, both validated at once, with flows/stack/config.py
`load_config`. Its `inputs:` section is derived from the run parameters for DVC
(flows/workspace/versioning.py) and is not read back.
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
    """Read `path` (optional when it is the default), apply overrides, validate the run
    parameters. The `stack:` section is not checked here: commands use `load_config`."""
    return validate_params(split_stack(read_with_overrides(path, overrides))[0])


def validate_params(raw: Any) -> Params:
    return validated((Params, raw, ""))[0]


def split_stack(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A raw params.yaml tree as (its run parameters, its `stack:` section); `inputs:` dropped."""
    run = {key: value for key, value in raw.items() if key not in (STACK, INPUTS)}
    return run, raw.get(STACK) or {}


def validated(*sections: tuple[type[BaseModel], Any, str]) -> list[Any]:
    """Each `(model, raw, section)` validated; every problem of all of them in one InputError."""
    values, problems = [], []
    for model, raw, section in sections:
        try:
            values.append(model.model_validate(raw))
        except ValidationError as exc:
            problems += [_describe(e, model, section) for e in exc.errors()]
    if problems:
        raise InputError("invalid params:\n" + "\n".join(problems))
    return values


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
    node[leaf] = _value(text) if text else None


def _value(text: str) -> Any:
    """A `--set` value read as YAML (`2` a number, `[1, 2]` a list); text that is no YAML is the
    string it spells (`*/15 * * * *`: YAML reads `*` as an alias)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
