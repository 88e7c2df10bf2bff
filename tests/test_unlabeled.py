"""The unlabeled pool (data.unlabeled) through the whole flow: `shrinkflow run --set
data.unlabeled=...` keeps the training inputs out of it, writes its two parts into the splits'
manifest, tracks its file in DVC (a dep of load, by content) and its parts in MLflow, and
metrics.json counts the final model's disagreements with the teacher on the certify part."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect.artifacts import Artifact

from conftest import gate_record, make_project
from flows.cli import main
from tasks.config import DataConfig
from tasks.data import load_data
from tasks.evaluate import model_answers
from tasks.models import read_model
from tasks.quantize import convert_to_tflite
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier
from test_flow import datasets_by_context, runs_by_parent
from test_input_changes import aged, dvc_status
from test_versioning import md5

TRAINED, OTHERS = 5, 60  # pool inputs from the training split, and from outside the data set


@pytest.fixture(scope="module")
def pool_run(prefect_server, tmp_path_factory, digits_npz) -> dict:
    """One run of a fresh project (500 digits) whose pool holds 5 of its training inputs and 60
    digits from outside it."""
    root = tmp_path_factory.mktemp("project")
    params = make_project(root, digits_npz)
    trained = load_data(params.data, params.seed).train.read(slice(TRAINED))
    others = load_data(DataConfig(), seed=0).test.read(slice(OTHERS))  # not among the 500
    pool = aged_npz(tmp_path_factory.mktemp("inputs") / "pool.npz",
                    np.concatenate([trained, others]))
    previous = Path.cwd()
    os.chdir(root)
    try:
        code = main(["run", "--set", f"data.unlabeled=npz:{pool}"])
    finally:
        os.chdir(previous)
    return {"code": code, "root": root, "pool": pool,
            "data": Dataset.load(root / "artifacts" / "splits.json"),
            "params": yaml.safe_load((root / "params.yaml").read_text())}


def aged_npz(path: Path, x: np.ndarray) -> Path:
    np.savez(path, x=x)
    return aged(path)


def test_the_pool_less_its_training_inputs_is_split_in_two_disjoint_parts(pool_run):
    assert pool_run["code"] == 0
    data, pool_x = pool_run["data"], np.load(pool_run["pool"])["x"]
    trained = {bytes(x) for x in data.train.read()}
    fresh = [row for row, x in enumerate(pool_x) if bytes(x) not in trained]
    assert len(pool_x) - len(fresh) >= TRAINED  # dropped (digits repeat a few images too)
    choose, certify = data.pool.choose.rows.tolist(), data.pool.certify.rows.tolist()
    assert not set(choose) & set(certify)
    assert sorted(choose + certify) == fresh
    assert len(choose) == len(fresh) // 2  # data.unlabeled_choose_fraction 0.5


def test_metrics_count_the_final_models_disagreements_with_the_teacher_on_the_certify_part(
        pool_run):
    root, certify = pool_run["root"], pool_run["data"].pool.certify
    metrics = json.loads((root / "metrics" / "metrics.json").read_text())
    predictions = np.load(root / "artifacts" / "predictions.npz")
    teacher, final = predictions["teacher.unlabeled"], predictions["final.unlabeled"]
    assert metrics["fidelity"] == {"n": len(certify), "disagree": int(np.sum(teacher != final))}
    fp32_teacher = convert_to_tflite(read_model(root / "artifacts" / "teacher.h5"))
    deployed = (root / "artifacts" / "model.tflite").read_bytes()
    for model, classes in ((fp32_teacher, teacher), (deployed, final)):
        np.testing.assert_array_equal(
            model_answers(pool_run["data"].task, TFLiteClassifier(model).predict, certify),
            classes)
    (parent,), _ = runs_by_parent(pool_run["params"]["tracking"]["uri"])
    assert parent.data.metrics["fidelity.disagree"] == metrics["fidelity"]["disagree"]
    # the gate weighs it: the fidelity bound beside the paired one, each at 97.5 %
    record = gate_record("test-int8", "1", pool_run["params"]["tracking"]["uri"])
    assert record["gate.fidelity.disagree"] == metrics["fidelity"]["disagree"]
    assert (f"disagrees with the teacher on {metrics['fidelity']['disagree']} of "
            f"{len(certify)} unlabeled inputs") in record["gate.evidence"]
    assert "at 97.5 %" in record["gate.evidence"]


def test_the_parts_are_mlflow_datasets_and_the_pool_a_dvc_dep_of_load_by_content(pool_run):
    root, pool, data = pool_run["root"], pool_run["pool"], pool_run["data"]
    (parent,), _ = runs_by_parent(pool_run["params"]["tracking"]["uri"])
    logged = datasets_by_context(parent)
    for name, part in data.pool.parts.items():
        assert logged[f"unlabeled_{name}"].digest == part.digest
        assert logged[f"unlabeled_{name}"].name == "pool.npz"
        assert (f"- unlabeled, {name} (`npz:{pool}`): {len(part):,} inputs, `{part.digest}`"
                in Artifact.get("model-card").data)
    assert pool_run["params"]["inputs"]["data"]["unlabeled"] == str(pool)
    assert parent.data.tags["input.data.unlabeled.md5"] == md5(pool)
    assert dvc_status(root) == {}

    aged_npz(pool, np.load(pool)["x"][::-1])  # the same inputs in another order, replaced in place
    assert str(pool) in json.dumps(dvc_status(root)["load"])
