"""Tests for flows.workspace.params: params.yaml, `KEY=VALUE` overrides, errors naming the key,
flatten."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows.stack.config import StackConfig, load_config
from flows.workspace.params import flatten, load_params, validate_params
from flows.workspace.versioning import inputs_section
from tasks.config import Params
from tasks.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO / "params.yaml"


def test_repo_params_yaml_spells_out_every_default():
    written = yaml.safe_load(PARAMS_YAML.read_text())
    stack = written.pop("stack")
    assert written.pop("inputs") == inputs_section(Params())  # what a run writes: DVC's deps
    assert flatten(written) == flatten(Params().model_dump(mode="json"))
    assert stack == StackConfig().model_dump(mode="json")
    assert load_params(PARAMS_YAML) == Params()
    assert load_config(PARAMS_YAML).stack == StackConfig()


def test_stack_section_is_read_apart_from_the_run_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 3\nstack:\n  prefect_port: 4300\n")
    config = load_config(path, ["stack.mlflow_port=5100"])
    assert config.params == load_params(path) and config.params.seed == 3
    assert config.stack == StackConfig(prefect_port=4300, mlflow_port=5100)
    assert config.args == ("--params", str(path), "--set", "stack.mlflow_port=5100")  # for `serve`
    with pytest.raises(InputError, match="stack.ports: unknown key; allowed here: host, prefect_port"):
        load_config(path, ["stack.ports=1"])


def test_every_section_is_validated_at_once_naming_each_problem(tmp_path):
    with pytest.raises(InputError) as refused:
        load_config(PARAMS_YAML, ["stack.cron=bogus", "distill.temperature=0",
                                  "stack.timezone=Mars"])
    assert str(refused.value).splitlines()[1:] == [
        "  distill.temperature = 0: Input should be greater than 0",
        "  stack.cron = 'bogus': Wrong number of fields: give five fields, minute hour "
        "day-of-month month day-of-week, e.g. `0 2 * * *` (02:00 every day)",
        "  stack.timezone = 'Mars': not an IANA time zone name; use e.g. `UTC` or `Europe/Berlin`"]


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/15 1-5 * * mon-fri", "30 4 1,15 JAN-dec 0",
                                  "0 0 * * 7", "5/10 * * * *", "0 2 * * mon#1"])
def test_standard_cron_schedules_are_accepted(cron):
    """`--set stack.cron=*/15 ...` too, which YAML cannot read (`*` starts an alias): the text."""
    assert load_config(PARAMS_YAML, [f"stack.cron={cron}", "stack.timezone=Europe/Berlin"]
                       ).stack.cron == cron


@pytest.mark.parametrize("cron, problem", [
    ("0 2 * *", "Wrong number of fields: give five fields"),
    ("0 25 * * *", "Bad hour: give five fields"),
    ("0 2 * * 8", "Bad day-of-week"),
    ("5-2 * * * *", "Bad minute"),
    ("*/0 * * * *", "Bad minute"),
])
def test_a_cron_schedule_out_of_its_fields_is_refused_naming_the_field(cron, problem):
    with pytest.raises(InputError, match=f"stack.cron = '{re.escape(cron)}': {problem}"):
        load_config(PARAMS_YAML, [f"stack.cron={cron}"])


def test_default_path_is_params_yaml_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert load_params() == Params()
    monkeypatch.chdir(tmp_path)
    assert load_params() == Params()  # no params.yaml here: the built-in defaults
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    assert load_params().seed == 7


def test_overrides_apply_typed_values_and_leave_the_rest():
    params = load_params(PARAMS_YAML, ["distill.temperature=2", "sparsify.enabled=false"])
    expected = Params()
    expected.distill.temperature = 2.0
    expected.sparsify.enabled = False
    assert params == expected
    assert params.sparsify.enabled is False


@pytest.mark.parametrize(
    "override, read, value",
    [
        ("seed=0", lambda p: p.seed, 0),
        ("data.image_size=[32, 16]", lambda p: p.data.image_size, (32, 16)),
        ("data.image_size=224", lambda p: p.data.image_size, (224, 224)),  # one number: a square
        ("gate.max_accuracy_drop=0.2", lambda p: p.gate.max_accuracy_drop, 0.2),
        ("data.source=npz:/tmp/d.npz", lambda p: p.data.source, "npz:/tmp/d.npz"),
        ("data.color_mode=grayscale", lambda p: p.data.color_mode, "grayscale"),
        ("model.weights=w.h5", lambda p: p.model.weights, "w.h5"),
        ("quantize.enabled=no", lambda p: p.quantize.enabled, False),
    ],
)
def test_override_values_are_parsed_as_yaml(override, read, value):
    assert read(load_params(PARAMS_YAML, [override])) == value


def test_later_override_wins_and_missing_sections_are_created(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\n")
    params = load_params(path, ["seed=2", "seed=3", "distill.alpha=0.5"])
    assert (params.seed, params.distill.alpha) == (3, 0.5)


BAD_OVERRIDES = [
    pytest.param(
        ["distill.temperature=0"], r"distill\.temperature = 0: .*greater than 0", id="temperature-0"
    ),
    pytest.param(
        ["sparsify.final_sparsity=1.0"],
        r"sparsify\.final_sparsity = 1\.0: .*less than 1",
        id="final-sparsity-1.0",
    ),
    pytest.param(
        ["sparsify.final_sparsity=1.2"],
        r"sparsify\.final_sparsity = 1\.2: .*less than 1",
        id="final-sparsity-1.2",
    ),
    pytest.param(
        ["gate.confidence=1"], r"gate\.confidence = 1: .*less than 1", id="confidence-1"
    ),
    pytest.param(
        ["gate.max_accuracy_drop=1"],
        r"gate\.max_accuracy_drop = 1: that is 100 points: the budget is a fraction \(0\.01 = 1 "
        r"point\); for 1 point write 0\.01; at most 0\.2 \(20 points\)$",
        id="budget-in-points",
    ),
    pytest.param(
        ["gate.max_accuracy_drop=0.5"],
        r"gate\.max_accuracy_drop = 0\.5: that is 50 points: the budget is a fraction",
        id="budget-over-20-points",
    ),
    pytest.param(
        ["quantize.max_accuracy_drop=2"],
        r"quantize\.max_accuracy_drop = 2: that is 200 points: the budget is a fraction",
        id="mixed-budget-in-points",
    ),
    pytest.param(
        ["data.image_size=[224]"],
        r"data\.image_size = \[224\]: give \[height, width\], e\.g\. \[224, 224\], or one "
        r"number for a square",
        id="image-size-one-item",
    ),
    pytest.param(
        ["distill.temprature=2"],
        r"distill\.temprature: unknown key; allowed here: .*\btemperature\b.*\balpha\b",
        id="unknown-key",
    ),
    pytest.param(
        ["distil.temperature=2"],
        r"distil: unknown key; allowed here: seed, data, model, sparsify, distill, quantize, "
        r"evaluate, tracking",
        id="unknown-section",
    ),
    pytest.param(
        ["model.epochs=many"], r"model\.epochs = 'many': .*valid integer", id="epochs-not-int"
    ),
    pytest.param(
        ["data.source=csv:x.csv"],
        r"data\.source = 'csv:x\.csv': must be `digits`, `npz:PATH`, `images:DIR` or `tfrecord:PATH`",
        id="bad-data-source",
    ),
    pytest.param(
        ["data.unlabeled=digits"],
        r"data\.unlabeled = 'digits': must be `npz:PATH` \(an array x\), `images:DIR` \(a flat "
        r"folder of images\) or `tfrecord:PATH`, or null",
        id="unknown-unlabeled-kind",
    ),
    pytest.param(
        ["data.unlabeled_choose_fraction=1"],
        r"data\.unlabeled_choose_fraction = 1: Input should be less than 1",
        id="choose-all-of-the-pool",
    ),
    pytest.param(
        ["tracking.uri=file:./mlruns"],
        r"tracking\.uri = 'file:\./mlruns': MLflow 3 refuses file stores",
        id="file-store-uri",
    ),
    pytest.param(
        ["tracking.uri=mlruns"], r"tracking\.uri = 'mlruns': MLflow 3 refuses", id="bare-path-uri"
    ),
    pytest.param(
        ["data.test_fraction=0.5", "data.val_fraction=0.4"],
        r"data: test_fraction \+ val_fraction must be < 0\.9 .*got 0\.5 \+ 0\.4",
        id="fractions-too-large",
    ),
    pytest.param(
        ["sparsify.initial_sparsity=0.9"],
        r"sparsify: initial_sparsity \(0\.9\) must not exceed final_sparsity \(0\.8\)",
        id="initial-above-final",
    ),
    pytest.param(["distill.temperature"], r"--set 'distill\.temperature': expected KEY=VALUE",
                 id="no-equals"),
    pytest.param(["=2"], r"--set '=2': expected KEY=VALUE", id="no-key"),
    pytest.param(["seed.value=1"], r"--set seed\.value: seed is not a section", id="into-scalar"),
    pytest.param(["evaluate.threads=[1, 0]"],
                 r"evaluate\.threads\.1 = 0: Input should be greater than or equal to 1",
                 id="no-threads"),
    pytest.param(["evaluate.threads=[4, 4]"], r"evaluate\.threads = \[4, 4\]: list each thread "
                 r"count once", id="threads-twice"),
    pytest.param(["search.enabled=true", "quantize.qat_epochs=2"],
                 r"params: quantize\.qat_epochs 2 trains for the full-integer INT8 conversion, but "
                 r"search\.modes also tries dynamic, float16, mixed; set search\.modes: \[int8\], "
                 r"or quantize\.qat_epochs: 0", id="qat-searching-other-modes"),
]


@pytest.mark.parametrize("overrides, message", BAD_OVERRIDES)
def test_bad_values_are_refused_naming_key_and_value(overrides, message):
    with pytest.raises(InputError, match=message):
        load_params(PARAMS_YAML, overrides)


def test_qat_with_the_search_is_accepted_searching_int8_only():
    """The search's trials set quantize.mode: with QAT on, int8 is the one they may set."""
    params = load_params(PARAMS_YAML, ["search.enabled=true", "quantize.qat_epochs=2",
                                       "search.modes=[int8]"])
    assert (params.search.modes, params.quantize.qat_epochs) == (["int8"], 2)
    off = load_params(PARAMS_YAML, ["quantize.qat_epochs=2"])  # search off: its modes unused
    assert off.search.modes == Params().search.modes


def test_every_invalid_key_is_reported_at_once():
    with pytest.raises(InputError) as error:
        load_params(PARAMS_YAML, ["distill.temperature=0", "model.epochs=0", "quantize.bits=4"])
    for key in ("distill.temperature = 0", "model.epochs = 0", "quantize.bits: unknown key"):
        assert key in str(error.value)


def test_missing_params_file_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"--params: .*nope\.yaml does not exist"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- seed\n- data\n", "must be a mapping of sections"),
        ("just a sentence\n", "must be a mapping of sections"),
        ("42\n", "must be a mapping of sections"),
        ("data: [unclosed\n", "is not valid YAML"),
    ],
)
def test_params_file_that_is_not_a_yaml_mapping_is_refused(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_params(path)


def test_validate_params_refuses_a_raw_tree_naming_the_key():
    with pytest.raises(InputError, match=r"seed = -1: .*greater than or equal to 0"):
        validate_params({"seed": -1})


@pytest.mark.parametrize(
    "tree, flat",
    [
        ({"a": {"b": 1}, "c": 2}, {"a.b": 1, "c": 2}),
        ({"a": {"b": {"c": [1, 2]}, "d": None}}, {"a.b.c": [1, 2], "a.d": None}),
        ({}, {}),
    ],
)
def test_flatten_joins_nested_keys_with_dots(tree, flat):
    assert flatten(tree) == flat
