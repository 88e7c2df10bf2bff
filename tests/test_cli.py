"""The command line: bad input is refused before any work with exit 2, a message and no traceback,
leaving earlier artifacts untouched; stages run one at a time from each other's files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from flows.cli import main
from flows.stages import STAGES
from tasks.models import write_model

SHRINKFLOW = str(Path(sys.executable).parent / "shrinkflow")


@pytest.fixture
def project(dvc_project, monkeypatch):
    """The working directory is a fresh project holding a tiny params.yaml."""
    monkeypatch.chdir(dvc_project)
    return dvc_project


@pytest.fixture
def workspace(project):
    """A project that also holds the outputs of an earlier run, which must survive the test."""
    earlier = {Path("artifacts/model.tflite"): b"earlier model", Path("metrics/metrics.json"): b"{}"}
    for path, content in earlier.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    yield project
    assert {path: path.read_bytes() for path in earlier} == earlier, "earlier artifacts changed"


def model_file(path: Path, input_shape: tuple, outputs: int, extra=()) -> str:
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), *extra,
                              keras.layers.Dense(outputs, activation="softmax")])
    write_model(model, path)
    return str(path)


def npz_file(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def digits_like(n: int = 60, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1)).astype(np.float32), np.arange(n) % classes


BAD_INPUTS = {
    "missing model file": (lambda d: [f"model.source={d}/nope.h5"], "nope.h5 does not exist"),
    "corrupt model file": (
        lambda d: (Path(d, "bad.h5").write_bytes(os.urandom(512)), [f"model.source={d}/bad.h5"])[1],
        "cannot read .*bad.h5 as a Keras model",
    ),
    "input shape mismatch": (
        lambda d: [f"model.source={model_file(Path(d, 'm.h5'), (6, 6, 1), 10)}"],
        r"takes inputs of shape \(6, 6, 1\) but the data's samples have shape \(8, 8, 1\)",
    ),
    "labels beyond the model's outputs": (
        lambda d: [f"model.source={model_file(Path(d, 'm.h5'), (8, 8, 1), 5)}"],
        "labels go up to 9 but the model has 5 outputs",
    ),
    "negative labels": (
        lambda d: [f"data.source={npz_file(Path(d, 'd.npz'), digits_like()[0], digits_like()[1] - 1)}"],
        "label -1 .* out of range",
    ),
    "NaN in the data": (
        lambda d: [f"data.source={npz_file(Path(d, 'd.npz'), np.full((60, 8, 8, 1), np.nan), digits_like()[1])}"],
        "contains NaN, inf",
    ),
    "one class": (
        lambda d: [f"data.source={npz_file(Path(d, 'd.npz'), digits_like()[0], np.zeros(60, int))}"],
        "1 class",
    ),
    "empty data set": (
        lambda d: [f"data.source={npz_file(Path(d, 'd.npz'), np.zeros((0, 8, 8, 1)), np.zeros(0, int))}"],
        "the data set has no samples",
    ),
    "unlabeled pool too small to certify the gate's budget": (
        lambda d: (np.savez(Path(d, "pool.npz"), x=digits_like(20)[0]),
                   [f"data.unlabeled=npz:{Path(d, 'pool.npz')}", "gate.max_accuracy_drop=0.01"])[1],
        r"data.unlabeled: its certify part holds 10 inputs .* takes at least 368 .*give at least "
        r"735 unlabeled inputs",
    ),
    "final_sparsity of 1": (lambda d: ["sparsify.final_sparsity=1.0"], "final_sparsity = 1.0: Input should be less than 1"),
    "temperature of 0": (lambda d: ["distill.temperature=0"], "temperature = 0: Input should be greater than 0"),
    "calibration beyond the split": (
        lambda d: ["quantize.calibration_samples=5000"], "calibration_samples is 5000 .* training split has 360"
    ),
    "unknown quantize mode": (
        lambda d: ["quantize.mode=int2"], "quantize.mode = 'int2': Input should be 'int8', 'int16x8'"
    ),
    "int16x8 with an op LiteRT has no 16x8 kernel for": (
        lambda d: ["quantize.mode=int16x8",
                   f"model.source={model_file(Path(d, 'm.h5'), (8, 8, 1), 10, [keras.layers.Dense(8), keras.layers.Activation('elu')])}"],
        "quantize.mode int16x8: LiteRT cannot run this model in that mode .*'ELU'",
    ),
    "unknown key": (lambda d: ["distill.temprature=2"], "distill.temprature: unknown key; allowed here: .*temperature"),
    "unprunable layer, policy error": (
        lambda d: ["sparsify.unsupported_layers=error",
                   f"model.source={model_file(Path(d, 'm.h5'), (8, 8, 1), 10, [keras.layers.Dense(8), keras.layers.PReLU(name='prelu')])}"],
        r"cannot prune prelu \(PReLU\)",
    ),
    "2:4 on a layer with 1 input channel, policy error": (
        lambda d: ["sparsify.pattern=2:4", "sparsify.unsupported_layers=error"],
        r"cannot prune conv1 \(Conv2D: input dimension 1 .* not a multiple of 4\)",
    ),
    "2:4 on a narrower student's layer, policy error": (
        lambda d: ["sparsify.pattern=2:4", "sparsify.unsupported_layers=error", "distill.width=0.125",
                   f"model.source={model_file(Path(d, 'm.h5'), (8, 8, 1), 10, [keras.layers.Dense(48)])}"],
        r"\(Dense: input dimension 6 of \(6, 10\) is not a multiple of 4\)",  # the teacher's: 48
    ),
    "QAT for a float16 conversion": (
        lambda d: ["quantize.qat_epochs=1", "quantize.mode=float16"],
        "quantize.qat_epochs: 0, or quantize.enabled: true with quantize.mode: int8",
    ),
    "QAT on a layer tfmot cannot quantize": (
        lambda d: ["quantize.qat_epochs=1", "distill.init=random",
                   f"model.source={model_file(Path(d, 'm.h5'), (8, 8, 1), 10, [keras.layers.Dense(8), keras.layers.PReLU(name='prelu')])}"],
        r"cannot quantize layer prelu \(PReLU\) .* set quantize.qat_epochs: 0",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message_and_touches_nothing(case, workspace, capsys):
    make_overrides, message = BAD_INPUTS[case]
    sets = [arg for override in make_overrides(workspace) for arg in ("--set", override)]
    assert main(["run", *sets]) == 2
    err = capsys.readouterr().err
    assert "shrinkflow: error: " in err
    assert re.search(message, err), err
    assert not Path("mlflow.db").exists()  # refused before any run was opened


@pytest.mark.parametrize("command", [["run"], ["stage", "load"], ["init"], ["up"], ["deploy"],
                                     ["serve"], ["bench"]])
def test_every_command_refuses_a_bad_value_in_any_section_before_any_work(command, workspace,
                                                                          capsys):
    """The stack's section too, for a command that does not use it, with every problem at once."""
    sets = ["--set", "stack.cron=bogus", "--set", "gate.max_accuracy_drop=1"]
    assert main([*command, *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shrinkflow: error: invalid params:\n"), err
    assert "  gate.max_accuracy_drop = 1: that is 100 points" in err
    assert "  stack.cron = 'bogus': Wrong number of fields: give five fields" in err
    assert not Path("mlflow.db").exists() and not Path(".shrinkflow").exists()


def test_down_reads_no_config_so_a_broken_file_never_keeps_a_stack_up(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("stack: {cron: bogus}\n")
    assert main(["down"]) == 0
    assert capsys.readouterr().out == "no stack is running here\n"


def test_a_directory_that_is_no_project_gets_told_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")  # a machine where git knows nobody
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert main(["run"]) == 2
    assert "is not a DVC project in a git repository; run `shrinkflow init`" in capsys.readouterr().err
    assert main(["init"]) == 0
    done = capsys.readouterr().out
    steps = ("initialised: git init", "repository-local git identity", "dvc init", "first commit")
    assert all(step in done for step in steps), done
    identity = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True)
    assert identity.stdout.strip() == "shrinkflow@localhost"
    assert main(["init"]) == 0
    assert "already initialised" in capsys.readouterr().out


def test_unknown_stage_exits_2(workspace, capsys):
    assert main(["stage", "compress-harder"]) == 2
    assert "unknown stage 'compress-harder'; stages are load, search, sparsify" in capsys.readouterr().err


def test_bad_input_from_the_installed_command_shows_no_traceback(workspace):
    done = subprocess.run([SHRINKFLOW, "run", "--set", "distill.temperature=-1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "distill.temperature = -1" in done.stderr and "Traceback" not in done.stderr


def test_stages_run_one_by_one_from_each_others_files(project, capsys):
    for name in STAGES:
        assert main(["stage", name]) == 0, name
    out = capsys.readouterr().out
    assert "train_samples: 360" in out and "sparsity: 0.8" in out
    for path in ("artifacts/splits.json", "artifacts/teacher.h5", "artifacts/sparse.h5",
                 "artifacts/student.h5", "metrics/sparsity.json", "plots/tradeoff.png",
                 "artifacts/predictions.npz"):
        assert Path(path).stat().st_size > 0, path


def test_a_model_file_with_code_is_refused_before_its_code_runs(workspace, lambda_model, capsys):
    marker = workspace / "lambda.ran"
    path = lambda_model(workspace / "lambda.h5", marker)
    assert main(["run", "--set", f"model.source={path}"]) == 2
    err = capsys.readouterr().err
    assert "has a Lambda layer 'side_effect'" in err and "set model.trust_code: true" in err, err
    assert not marker.exists()


def test_finding_the_stack_imports_no_prefect():
    """Prefect reads PREFECT_API_URL once, when imported: `use_running_stack` sets it, so nothing
    it imports may import Prefect (else a run beside `up` starts a temporary server of its own)."""
    probe = ("import sys, flows.stack.servers; "
             "print(sorted(m for m in sys.modules if m.startswith('prefect')))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent.parent).stdout
    assert imported.strip() == "[]"
