"""The compress flow's run form as Prefect builds it from the flow's signature (its parameter
schema; no server, no browser: tests/test_stack.py drives the real form): params.yaml's keys as
titles, nothing marked `(Optional)`, the common keys first, both ends of every bound, choices
named, descriptions in plain words, and the server's checks agreeing with pydantic's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.compress import compress
from flows.stack.deployments import nightly_parameters
from tasks.config import Params

SCHEMA = parameter_schema(compress).model_dump_for_openapi()
DEFINITIONS = SCHEMA["definitions"]
SOURCE_PATH = re.compile(r"\b(tasks|flows)/\w+")


def resolved(shown: dict) -> dict:
    """A key as the form draws it: a `$ref`'s definition under the key's own title, description."""
    ref = shown.get("$ref")
    return DEFINITIONS[ref.rsplit("/", 1)[1]] | shown if ref else shown


def keys(schema: dict, path: str = "") -> Iterator[tuple[str, dict, dict]]:
    """Every key of the form under `schema`: its dotted path, its schema and its section's."""
    for key, shown in schema["properties"].items():
        shown = resolved(shown)
        yield f"{path}{key}", shown, schema
        if "properties" in shown:
            yield from keys(shown, f"{path}{key}.")


def nodes(schema: dict) -> Iterator[dict]:
    """`schema` and every schema inside it (choices, items)."""
    yield schema
    for child in schema.values():
        for value in child if isinstance(child, list) else [child]:
            if isinstance(value, dict):
                yield from nodes(value)


FORM = {path: (shown, section) for path, shown, section in keys(SCHEMA)}


def in_form_order(section: dict) -> list[str]:
    return sorted(section["properties"], key=lambda key: section["properties"][key]["position"])


def test_sections_are_titled_by_their_key_the_common_ones_first():
    params, _ = FORM["params"]
    assert [params["properties"][key]["title"] for key in params["properties"]] == \
        list(Params.model_fields)
    assert in_form_order(params)[:4] == ["model", "data", "gate", "search"]
    assert in_form_order(FORM["params.model"][0])[0] == "source"
    assert in_form_order(FORM["params.gate"][0])[0] == "max_accuracy_drop"
    assert in_form_order(FORM["params.distill"][0])[:3] == ["enabled", "width", "temperature"]


def test_every_key_is_titled_in_words_and_none_is_optional():
    """The form appends `(Optional)` to the title of a key its section does not require."""
    assert SCHEMA["required"] == ["params"]
    for path, shown, section in keys(FORM["params"][0], "params."):
        assert path.rsplit(".", 1)[-1] in section["required"], path
        assert shown["title"] == shown["title"].lower() and "_" not in shown["title"], path
    assert FORM["params.search.enabled"][0]["title"] == "search enabled"
    assert FORM["params.distill.learning_rate"][0]["title"] == "learning rate"
    assert {FORM[f"params.{name}.enabled"][0]["title"]
            for name in ("sparsify", "distill", "quantize", "search")} == {
        "sparsify enabled", "distill enabled", "quantize enabled", "search enabled"}


def test_choices_are_named_in_words():
    """Prefect names the tabs of an `a | b` key by Python type (`float`, `str`, `None`)."""
    assert [c["title"] for c in FORM["params.distill.width"][0]["anyOf"]] == ["number", "auto"]
    assert [c["title"] for c in FORM["params.data.image_size"][0]["anyOf"]] == ["list", "none"]
    assert all("title" in choice for node in nodes(SCHEMA) for choice in node.get("anyOf", ()))


def test_every_exclusive_bound_has_an_inclusive_twin():
    """The form's number inputs take `minimum` and `maximum` only (the browser then refuses -1)."""
    temperature = FORM["params.distill.temperature"][0]
    assert (temperature["minimum"], temperature["exclusiveMinimum"], temperature["maximum"]) == \
        (0, 0, 100)
    bounded = [node for node in nodes(SCHEMA)
               if {"exclusiveMinimum", "exclusiveMaximum"} & node.keys()]
    assert len(bounded) > 10
    for node in bounded:
        assert node.get("minimum") == node.get("exclusiveMinimum", node.get("minimum"))
        assert node.get("maximum") == node.get("exclusiveMaximum", node.get("maximum"))


def test_descriptions_are_plain_words():
    for path, (shown, _) in FORM.items():
        assert shown.get("description"), path
        assert "`" not in shown["description"], (path, shown["description"])
        assert not SOURCE_PATH.search(shown["description"]), (path, shown["description"])


@pytest.mark.parametrize("key, value", [("distill.temperature", -1.0), ("distill.temperature", 0),
                                        ("data.test_fraction", 1.0), ("evaluate.threads", [0]),
                                        ("search.trials", 0)])
def test_the_server_refuses_what_pydantic_refuses(tmp_path, key, value):
    """Prefect's server checks a run's parameters against this schema before the run starts."""
    nightly = nightly_parameters(Params(), tmp_path)
    assert validate(nightly, SCHEMA) == []
    section, name = key.split(".")
    nightly["params"][section][name] = value
    assert validate(nightly, SCHEMA)
    with pytest.raises(ValueError):
        Params.model_validate(nightly["params"])


def test_a_run_must_give_every_key():
    """A partial `params` would run the built-in defaults, not the project's, for the rest."""
    partial = {"params": {"search": Params().search.model_dump(mode="json")}}
    assert "'seed' is a required property" in json.dumps(
        [error.message for error in validate(partial, SCHEMA)])
