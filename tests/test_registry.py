"""The registry as the flow uses it (`register_and_gate` in a temp sqlite store, no flow around it):
a champion made for other data is never replaced, and the registered model loads, predicts and is
served over HTTP from a fresh virtualenv that holds only the model's own requirements."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from conftest import gate_record
from test_stack import free_port

from flows.record.gated import Gated
from flows.record.registry import register_and_gate
from flows.record.report import gate_comparison
from flows.record.tracking import use_experiment
from tasks.artifacts import Workspace, write_bytes
from tasks.config import DataConfig, EvaluateConfig, GateConfig, TrackingConfig
from tasks.data import load_data
from tasks.gate import Evidence, decide_rule
from tasks.measurements import Comparison
from tasks.paired import PairedDrop
from tasks.quantize import convert_to_tflite
from tasks.speed import SAME_SPEED, Slowdown
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier

NAME = "digits-int8"
CARD = "# Model card: `digits-int8`\n"  # the flow's (flows/record/model_card.py): test_flow
FIGURES = Comparison(compression_ratio=4.0, speedup=2.0, accuracy_drop=0.001)  # metrics.json's
UV = str(Path(sys.executable).parent / "uv")
SERVE = """
import importlib.util, sys
import mlflow, numpy as np
assert importlib.util.find_spec("tasks") is None and importlib.util.find_spec("tensorflow") is None
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
"""


def register(root: Path, data: Dataset) -> Gated:
    """Register a small INT8 dense model for `data` (written to `root` as the flow's artifacts)
    through the flow's own `register_and_gate`, in a new run."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(data.input_shape, name="pixels"),
                              keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(data.num_classes, activation="softmax",
                                                 name="dense")],
                             name="model")  # fixed names, the input's too: the .tflite keeps them
    ws = Workspace(root)
    data.save(ws.data)
    write_bytes(ws.model, convert_to_tflite(model, "int8", data.train.read(slice(20))))
    cfg = GateConfig(registered_model=NAME, max_accuracy_drop=0.2)
    as_fast = Slowdown(1.0, 0.9, 1.1, model_us=5.0, reference_us=5.0, rounds=20, confidence=0.95,
                       threads=1)
    found = Evidence(decide_rule(cfg, len(data.test), 2), PairedDrop(len(data.test), 1, 0, 0.95),
                     as_fast)
    with mlflow.start_run():
        return register_and_gate(cfg, EvaluateConfig(latency_runs=200, warmup_runs=1), ws, found,
                                 CARD, FIGURES)


@pytest.fixture(scope="module")
def champion(tmp_path_factory, digits: Dataset) -> Path:
    """A store whose `NAME@champion` is a model for the digits; returns the champion's workspace."""
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    use_experiment(TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="test"))
    gated = register(root / "champion", digits)
    assert (gated.version, gated.decision.promote, gated.champion) == ("1", True, None)
    assert gated.decision.reason.startswith("first model within the accuracy gate (certified: ")
    yield root / "champion"
    mlflow.set_tracking_uri(previous)


def test_a_champion_for_other_data_is_not_replaced_and_the_reason_names_the_setting(champion, digits, tmp_path):
    arrays = {}
    for name, split in digits.splits.items():
        arrays |= {f"x_{name}": split.read()[:, ::2, ::2], f"y_{name}": split.labels}
    np.savez(tmp_path / "smaller.npz", **arrays)
    smaller = load_data(DataConfig(source=f"npz:{tmp_path / 'smaller.npz'}"), seed=0)
    gated = register(tmp_path, smaller)
    version, decision = gated.version, gated.decision
    assert not decision.promote
    assert decision.reason == (
        f"the champion of gate.registered_model '{NAME}' takes inputs (8, 8, 1) / 10 classes, this "
        "run's model inputs (4, 4, 1) / 10 classes: not comparable; use a registered model name "
        f"per task, e.g. --set gate.registered_model={NAME}-<task>")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    tags = client.get_model_version(NAME, version).tags
    assert tags == {"verdict": "not promoted", "certified": "true", "accuracy_drop_pt": "0.1",
                    "accuracy_drop_upper_pt": tags["accuracy_drop_upper_pt"],
                    "compression_ratio": "4.0", "speedup": "2.0"}  # FIGURES, as the headline
    record = gate_record(NAME, version, mlflow.get_tracking_uri())  # the rest, beside the model
    assert record["gate.decision"] == decision.reason and record["gate.champion.version"] == "1"
    assert "gate.champion.accuracy" not in record  # never measured on data it cannot take
    assert "gate.champion_drop" not in record
    assert record["gate.candidate.accuracy"] >= 0
    card = CARD + f"\n## Registry\n\nNot promoted; the champion stays version 1: {decision.reason}.\n"
    assert gated.headline == ("not promoted: 4.0x smaller (gzip), 2.00x faster, "
                              "accuracy drop +0.10 pt")
    assert gated.card == card
    assert client.get_model_version(NAME, version).description == f"{gated.headline}\n\n{card}"
    bundle = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}",
                                                      dst_path=str(tmp_path / "bundle")))
    assert (bundle / "artifacts" / "model_card.md").read_text() == card  # beside model.tflite
    assert (bundle / "artifacts" / "model.tflite").exists()


def test_the_champion_is_compared_sample_by_sample_and_both_drops_are_recorded(
        champion, digits, tmp_path):
    gated = register(tmp_path, digits)  # the champion's very model: no sample differs
    version, decision = gated.version, gated.decision
    size = f"{len(gzip.compress((tmp_path / 'artifacts' / 'model.tflite').read_bytes(), 9)):,} B"
    assert not decision.promote  # the same size: said exactly, not as `4.3 KiB vs 4.3 KiB`
    assert f"does not beat the champion: gzip {size} vs the champion's {size}" in decision.reason
    tags = gate_record(NAME, version, mlflow.get_tracking_uri())
    n = len(digits.test.labels)
    assert (tags["gate.champion_drop"], tags["gate.champion_drop.worse"],
            tags["gate.champion_drop.better"], tags["gate.champion_drop.n"]) == (0, 0, 0, n)
    assert tags["gate.champion_drop.lower"] < 0 < tags["gate.champion_drop.upper"]
    teacher = PairedDrop(n, 1, 0, 0.95)
    assert tags["gate.teacher_drop.upper"] == pytest.approx(teacher.upper)
    assert tags["gate.teacher_drop.worse"] == 1 and tags["gate.certified"] == "true"
    table, _, teacher_line, champion_line, teacher_speed, champion_speed, _ = gate_comparison(
        gated.measured, gated.champion)
    header, _, accuracy, size, _, memory = table.splitlines()
    assert header == "| test split | this run's model | champion (version 1) |"
    assert accuracy.startswith("| accuracy |") and size.startswith("| gzip size |")
    assert memory.startswith("| runtime memory |")
    assert len(set(accuracy.split("|")[2:4])) == len(set(size.split("|")[2:4])) == 1  # the same model
    assert teacher_line.startswith(f"- vs the teacher: drop +{100 / n:.2f} pt, between ")
    assert champion_line.startswith("- vs the champion: drop +0.00 pt, between ")
    assert champion_line.endswith(f"at 95 % (worse on 0, better on 0 of {n} samples)")
    assert teacher_speed.startswith("- vs the teacher: latency 5.0 vs the teacher's 5.0 us: "
                                    "1.00x faster (between 1.10x SLOWER and 1.11x faster at 95 %")
    assert champion_speed.startswith("- vs the champion: latency ")
    assert champion_speed.endswith("1 thread, 20 interleaved rounds)")
    assert abs(tags["gate.champion_slowdown.ratio"] - 1) < SAME_SPEED  # the same model


@pytest.fixture(scope="module")
def model_venv(champion, tmp_path_factory) -> Path:
    """A fresh virtualenv with only the registered model's requirements.txt, from PyPI (uv's cache
    makes it quick after the first time; CI needs PyPI access). Returns its python."""
    model = Path(mlflow.artifacts.download_artifacts(
        f"models:/{NAME}@champion", dst_path=str(tmp_path_factory.mktemp("model"))))
    assert not {"uv.lock", "pyproject.toml"} & {p.name for p in model.iterdir()}  # not shrinkflow's
    venv = tmp_path_factory.mktemp("model-venv")
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)],
                   check=True, timeout=120)
    subprocess.run([UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "-r", str(model / "requirements.txt")], check=True, timeout=900)
    return venv / "bin" / "python"


@pytest.mark.slow
def test_the_champion_loads_and_predicts_without_shrinkflow_installed(champion, model_venv, digits, tmp_path):
    """The slow one: a virtualenv built from PyPI (seconds with uv's cache, minutes without)."""
    np.save(tmp_path / "x.npy", digits.test.read(slice(8)))
    subprocess.run([str(model_venv), "-c", SERVE, f"models:/{NAME}@champion", "x.npy", "y.npy"],
                   cwd=tmp_path, env=model_env(model_venv), check=True, timeout=300)
    tflite = (champion / "artifacts" / "model.tflite").read_bytes()
    expected = TFLiteClassifier(tflite).predict(digits.test.read(slice(8)))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


@pytest.mark.slow
def test_the_champion_is_served_over_http_from_its_own_environment(champion, model_venv, digits,
                                                                    tmp_path):
    """`mlflow models serve -m models:/NAME@champion` of the model's virtualenv (no shrinkflow, no
    TensorFlow) answers `invocations` with what the evaluator's runner predicts."""
    port, log = free_port(), tmp_path / "serve.log"
    server = subprocess.Popen(
        [str(model_venv.parent / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=model_env(model_venv), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/ping"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        reply = requests.post(f"{url}/invocations", json={"inputs": digits.test.read(slice(8)).tolist()},
                              timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert reply.status_code == 200, reply.text
    tflite = (champion / "artifacts" / "model.tflite").read_bytes()
    expected = TFLiteClassifier(tflite).predict(digits.test.read(slice(8)))
    np.testing.assert_array_equal(np.asarray(reply.json()["predictions"], np.float32), expected)


def model_env(python: Path) -> dict[str, str]:
    """The model's virtualenv of `python`, activated: its bin/ first on PATH (uvicorn), no
    PYTHONPATH (no shrinkflow), this test's registry."""
    return {"PATH": f"{python.parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"],
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
