"""Shared fixtures: a few hundred digits, tiny Keras models, and a one-epoch config."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import prefect.main  # noqa: F401  (its logging dictConfig closes all handlers: not inside a test)
import pytest
import yaml

import tasks  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tasks.config import DataConfig, Params
from tasks.data import load_data
from tasks.splits import Dataset

REPO = Path(__file__).resolve().parents[1]
# Set by a test in the environment of a process it starts: every process that one starts, and
# theirs, inherit it, wherever they end up (a session of their own, re-parented to init).
TEST_MARK = "SHRINKFLOW_TEST_MARK"

# Two xdist workers for the two cores (pyproject.toml): TensorFlow in each, and in every process a
# test starts, keeps to one thread instead of sizing its pools to the whole machine in both (as
# the search's local workers do: flows/search.py `tensorflow_threads`). Read when TF starts.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# The nightly schedule (stack.cron) of a test project's stack or worker: 12 hours from now, so
# that it never fires during a test (`0 2 * * *` did, in a suite run at 02:00 UTC).
QUIET_CRON = f"0 {(datetime.now(UTC).hour + 12) % 24} * * *"


# The digits split the tests' slices are drawn from: 10 % validation, as before data.val_fraction
# `auto` (which gives digits 400): the slices, and the thresholds tuned on them, stay the same.
SLICED = DataConfig(val_fraction=0.1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """A small slice of the built-in digits: enough to learn, quick to train on."""
    full = load_data(SLICED, seed=0)
    return Dataset(full.train.subset(slice(300)), full.val.subset(slice(60)),
                   full.test.subset(slice(60)))


@pytest.fixture
def tiny_cnn(digits: Dataset):
    """An untrained two-layer CNN for the digits' (8, 8, 1) samples."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(digits.input_shape),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="dense"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])


@pytest.fixture
def trained_cnn(tiny_cnn, digits: Dataset):
    from tasks.config import ModelConfig
    from tasks.load import train_teacher

    return train_teacher(tiny_cnn, digits, ModelConfig(epochs=3))


@pytest.fixture(scope="session")
def marker_lambda():
    """`marker_lambda(marker)`: source of an identity lambda that creates `marker` when it runs
    (constants only, so Keras stores it as bytecode with nothing to look up when it loads)."""
    return lambda marker: f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]"


@pytest.fixture
def lambda_model(marker_lambda):
    """Make a tf_keras model file (.h5 or .keras by the path's suffix) for (8, 8, 1) samples whose
    Lambda layer `side_effect` creates `marker` whenever its code runs: `lambda_model(path, marker)`.
    Building the model runs the code once; that marker is removed before returning."""
    import tf_keras as keras

    def make(path: Path, marker: Path) -> Path:
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Lambda(eval(marker_lambda(marker)), name="side_effect"),
            keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"),
        ])
        model.save(path)
        marker.unlink()
        return path

    return make


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> Path:
    """500 of the digits as an `npz:` data source (x, y): a quicker chain for flow tests."""
    full = load_data(SLICED, seed=0)
    path = tmp_path_factory.mktemp("data") / "digits500.npz"
    np.savez(path, x=full.train.read(slice(500)), y=full.train.labels[:500])
    return path


@pytest.fixture
def tiny_params(tmp_path: Path, digits_npz: Path):
    """Make a Params: 500 digits, one epoch everywhere but distillation, few calibration samples,
    minimum latency runs, and MLflow in a temp sqlite file. Written to `tmp_path/params.yaml` and
    loaded as the CLI does, with `--set`-style overrides: `tiny_params("distill.enabled=false")`.
    """
    return lambda *overrides: write_tiny_params(tmp_path, digits_npz, *overrides)


def write_tiny_params(root: Path, data: Path, *overrides: str) -> Params:
    from flows.stack.config import load_config

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": f"npz:{data}", "val_fraction": 0.1},  # auto: 30 % of 400
        "model": {"epochs": 1},
        "sparsify": {"epochs": 1},
        # 10 epochs bring the student within the gate's 20 points of its one-epoch teacher
        # (2026-12-08: 70 % vs 58 % on 100 test samples; after 1 epoch, 12 %: chance)
        "distill": {"epochs": 10, "width": 0.25},  # auto: tests/test_distill.py
        "quantize": {"calibration_samples": 20},
        "evaluate": {"latency_runs": 200, "warmup_runs": 1},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test"},
        # the most accuracy budget the gate takes (20 points); tiny models: int8's (de)quantize
        # ops can outweigh a microsecond of work; the speed floor has its own tests (test_gate,
        # test_speed, test_flow)
        "gate": {"registered_model": "test-int8", "max_accuracy_drop": 0.2, "max_slowdown": 100},
        "stack": {"cron": QUIET_CRON},
    }))
    return load_config(path, overrides).params


def make_project(root: Path, data: Path, *overrides: str) -> Params:
    """A fresh project in `root`: this repo's dvc.yaml and stage sources, a tiny params.yaml,
    git + DVC initialised. Returns the params."""
    from flows.workspace.versioning import init_workspace

    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    for folder in ("tasks", "infra"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = write_tiny_params(root, data, *overrides)
    init_workspace(root, params)
    return params


def copy_project(source: Path, target: Path) -> None:
    """A project that has run, copied to `target` with its git, DVC cache and MLflow store: the
    paths that name `source` (the tracking URI in params.yaml, the artifact locations in
    mlflow.db) rewritten to name `target`. A test starts from a finished chain without running one."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    old, new = f"{source}/", f"{target}/"
    with closing(sqlite3.connect(target / "mlflow.db")) as db, db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("model_versions", "source"), ("model_versions", "storage_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    params = target / "params.yaml"
    params.write_text(params.read_text().replace(old, new))


@pytest.fixture
def dvc_project(tmp_path: Path, digits_npz: Path) -> Path:
    make_project(tmp_path, digits_npz)
    return tmp_path


@pytest.fixture(scope="module")
def module_project(tmp_path_factory, digits_npz: Path) -> Path:
    """A fresh project shared by the tests of one module."""
    root = tmp_path_factory.mktemp("project")
    make_project(root, digits_npz)
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (temporary, SQLite) for the flows of the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


def gate_record(model: str, version: str, tracking_uri: str) -> dict:
    """The gate.json a registered version carries beside its .tflite: every figure the gate
    measured, its decision and evidence (its tags hold only what a reviewer filters on)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        bundle = mlflow.artifacts.download_artifacts(f"models:/{model}/{version}", dst_path=tmp,
                                                     tracking_uri=tracking_uri)
        return json.loads((Path(bundle) / "artifacts" / "gate.json").read_text())


def running_with_mark(mark: str) -> list[str]:
    """The processes (as `pid command`) whose environment holds `TEST_MARK=mark`, dead ones not yet
    reaped (zombies) left out."""
    wanted, found = f"{TEST_MARK}={mark}".encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or wanted not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            if (proc / "stat").read_text().rsplit(") ", 1)[1].split()[0] not in "ZX":
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{proc.name} {command[:200].decode(errors='replace')}")
        except (OSError, IndexError):  # gone meanwhile, or another user's
            continue
    return found


def wait_until_none_with_mark(mark: str, seconds: float = 3.0) -> list[str]:
    """`running_with_mark` once it is empty, or after `seconds` (a process SIGKILLed at the end
    may take a moment to leave the process table)."""
    deadline = time.monotonic() + seconds
    while (left := running_with_mark(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
