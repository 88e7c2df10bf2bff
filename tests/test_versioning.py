"""DVC as the record of every run: real git, real DVC, real Prefect and MLflow, in a temp project."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import copy_project, make_project, write_tiny_params
from flows.compress import compress
from flows.stages import STAGES
from flows.workspace.versioning import workspace_lock

VENV_BIN = str(Path(sys.executable).parent)
ENV = os.environ | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # dvc.yaml's cmd is `shrinkflow`


def run(*cmd: str, cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(prefect_server, tmp_path_factory, digits_npz) -> tuple[Path, dict]:
    """A project after a whole run, and that run's report: the module's tests start from copies."""
    root = tmp_path_factory.mktemp("finished")
    make_project(root, digits_npz)
    return root, compress(write_tiny_params(root, digits_npz), workdir=str(root))


@pytest.fixture
def project(finished, tmp_path: Path) -> Path:
    """A copy of the finished project, this test's own."""
    copy_project(finished[0], tmp_path)
    return tmp_path


def test_after_a_run_dvc_has_nothing_to_do_and_a_rerun_skips_every_stage(
    finished, project, tiny_params
):
    dvc_project, (_, first) = project, finished
    assert json.loads(run("dvc", "status", "--json", cwd=dvc_project)) == {}
    assert "Data and pipelines are up to date" in run("dvc", "repro", cwd=dvc_project)

    model = dvc_project / "artifacts" / "model.tflite"
    before = model.stat().st_mtime_ns
    params = tiny_params()  # the first run's, rewritten as a user would (the run adds `inputs`)
    again = compress(params, workdir=str(dvc_project))
    assert again["stages"] == dict.fromkeys(STAGES, "skipped")
    assert again["metrics"] == first["metrics"]
    assert model.stat().st_mtime_ns == before

    client = MlflowClient(params.tracking.uri)
    children = client.search_runs(
        [client.get_experiment_by_name("test").experiment_id],
        f"tags.mlflow.parentRunId = '{again['mlflow_run_id']}'",
    )
    assert {c.data.tags["skipped"] for c in children} == {"true"}
    parent = client.get_run(again["mlflow_run_id"]).data.tags
    assert parent["dvc.experiment"] == again["experiment"]
    assert parent["dvc.md5.artifacts/model.tflite"] == md5(model)
    assert len(parent["mlflow.source.git.commit"]) == 40


def test_every_run_is_an_experiment_that_restores_byte_for_byte(finished, project, tiny_params):
    dvc_project, (_, first) = project, finished
    model = dvc_project / "artifacts" / "model.tflite"
    first_md5 = md5(model)
    second = compress(tiny_params("distill.temperature=2", "quantize.calibration_samples=30"),
                      workdir=str(dvc_project))
    # DVC's verdict: a changed distill param re-runs distill and what follows, nothing before
    # but the search (its trials run distill; off, it rewrites the same empty choice, so sparsify
    # stays up to date).
    assert second["stages"] == {"load": "skipped", "search": "ran", "sparsify": "skipped",
                                "distill": "ran", "quantize": "ran", "evaluate": "ran"}
    assert md5(model) != first_md5

    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=dvc_project))
    experiments = {
        exp["name"]: exp["data"]["params"]["params.yaml"]["data"]
        for baseline in shown for exp in baseline.get("experiments") or []
        for exp in exp["revs"]
    }
    assert experiments[first["experiment"]]["distill"]["temperature"] == 4.0
    assert experiments[second["experiment"]]["distill"]["temperature"] == 2

    diff = run("dvc", "metrics", "diff", first["experiment"], second["experiment"], "--json", cwd=dvc_project)
    assert "metrics/metrics.json" in json.loads(diff)
    plots = run("dvc", "plots", "diff", first["experiment"], second["experiment"], "--json",
                cwd=dvc_project)
    assert "plots/tradeoff.png" in plots

    run("dvc", "exp", "apply", first["experiment"], cwd=dvc_project)
    assert md5(model) == first_md5
    assert "temperature: 4.0" in (dvc_project / "params.yaml").read_text()


def test_outputs_push_to_a_local_remote_and_pull_into_a_fresh_clone(
    project, tiny_params, tmp_path_factory
):
    dvc_project = project
    store, clone = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("clone") / "project"
    run("dvc", "remote", "add", "-d", "store", str(store), cwd=dvc_project)
    compress(tiny_params(), workdir=str(dvc_project))
    run("git", "add", "-A", cwd=dvc_project)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run", cwd=dvc_project)

    run("git", "clone", "-q", str(dvc_project), str(clone), cwd=dvc_project)
    run("dvc", "pull", cwd=clone)
    model = Path("artifacts/model.tflite")
    assert md5(clone / model) == md5(dvc_project / model)


def test_a_second_run_waits_for_the_first_and_leaves_its_outputs_intact(project):
    dvc_project = project
    model = dvc_project / "artifacts" / "model.tflite"
    before = md5(model)
    from prefect.settings import PREFECT_API_URL

    same_server = ENV | {"PREFECT_API_URL": PREFECT_API_URL.value()}  # no second Prefect to start
    with workspace_lock(dvc_project):  # a first run, still going
        second = subprocess.Popen([f"{VENV_BIN}/shrinkflow", "run"], cwd=dvc_project, env=same_server,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        deadline = time.monotonic() + 300
        while not any("waiting for it to finish" in line for line in output):
            assert time.monotonic() < deadline and second.poll() is None, "".join(output)
            output.append(second.stdout.readline())
        assert md5(model) == before
    rest, _ = second.communicate(timeout=600)
    assert second.returncode == 0, "".join(output) + rest
    assert "all stages up to date" in rest
    assert md5(model) == before
