"""The accuracy-aware search: trials on a real Dask scheduler and worker (started as processes),
the chosen trial continuing the chain, and the search's bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from distributed import Client
from dvc.repo import Repo
from mlflow import MlflowClient

from conftest import make_project
from flows.compress import compress
from flows.params import load_params
from flows.search import STUDY_DB, NoFeasibleTrial
from flows.stages import check_inputs
from tasks.errors import InputError
from tasks.search import teacher_widths
from test_stack import free_port

DASK = Path(sys.executable).parent / "dask"


@pytest.fixture(scope="module")
def dask_cluster(prefect_server):
    """A Dask scheduler and one single-thread worker, each its own process; the worker reports
    its Prefect task runs to the test server. Yields (scheduler address, worker address)."""
    from prefect.settings import PREFECT_API_URL

    address = f"tcp://127.0.0.1:{free_port()}"
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                  address.rsplit(":", 1)[1], "--no-dashboard"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(1, timeout=180)
            (worker_address,) = client.scheduler_info()["workers"]
        yield address, worker_address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)


def search_project(root: Path, data: Path, address: str, *overrides: str):
    return make_project(root, data, "search.enabled=true", f"search.dask_address={address}",
                        "search.trials=2", "search.widths=[0.5]", "search.sparsities=[0.6,0.9]",
                        *overrides)


def test_trials_run_on_the_dask_worker_and_the_chosen_one_continues_the_chain(
        dask_cluster, tmp_path, digits_npz):
    address, worker = dask_cluster
    params = search_project(tmp_path, digits_npz, address, "search.max_accuracy_drop=1.0")
    report = compress(params, workdir=str(tmp_path))

    assert report["stages"]["search"] == "ran"
    record = json.loads((tmp_path / "artifacts" / "search" / "trials.json").read_text())
    trials = record["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"COMPLETE"}
    assert {t["worker"] for t in trials} == {worker}  # ran on the external worker
    assert (tmp_path / "artifacts" / "search" / "pareto.png").stat().st_size > 0
    chosen = json.loads((tmp_path / "artifacts" / "chosen.json").read_text())
    assert chosen["feasible"] and chosen["trial"] in {t["number"] for t in trials}
    best = min(trials, key=lambda t: (t["gzip_bytes"], -t["accuracy"]))  # smaller_gzip
    assert chosen["keys"]["sparsify.final_sparsity"] == best["sparsify.final_sparsity"]
    # the chain ran with the chosen keys: the final model has the chosen sparsity
    final = report["metrics"]["final"]
    assert final["sparsity"] == pytest.approx(chosen["keys"]["sparsify.final_sparsity"], abs=0.02)
    assert report["promoted"]

    client = MlflowClient(params.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    search_run = next(r for r in runs if r.info.run_name == "search")
    trial_runs = [r for r in runs if r.info.run_name.startswith("trial ")]
    assert len(trial_runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {search_run.info.run_id}
    assert {r.data.params["sparsify.final_sparsity"] for r in trial_runs} <= {"0.6", "0.9"}
    assert all(0 <= r.data.metrics["val.accuracy"] <= 1 for r in trial_runs)
    logged = {a.path for a in client.list_artifacts(search_run.info.run_id, "search")}
    assert logged == {"search/trials.json", "search/pareto.png"}
    with Repo(str(tmp_path)) as repo:
        assert repo.status() == {}  # dvc repro would have nothing to do


def test_a_budget_no_trial_meets_promotes_nothing_or_fails_when_required(
        dask_cluster, tmp_path, digits_npz):
    address, _ = dask_cluster
    # a one-unit-wide student cannot keep all of the teacher's validation accuracy
    params = search_project(tmp_path, digits_npz, address, "search.max_accuracy_drop=0",
                            "search.widths=[0.01]", "search.sparsities=[0.95]", "search.trials=1")
    report = compress(params, workdir=str(tmp_path))
    assert not report["promoted"]
    assert report["gate"].startswith("search: no trial reached validation accuracy")
    assert "closest: trial 0" in report["gate"]

    strict = load_params(tmp_path / "params.yaml", ["search.require_feasible=true"])
    with pytest.raises(NoFeasibleTrial, match="search.require_feasible is set"):
        compress(strict, workdir=str(tmp_path))
    # the same search, resumed from its storage: its one trial was not run again
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / STUDY_DB}")
    assert study.n_trials == 1


@pytest.mark.parametrize(("override", "message"), [
    ("search.dask_address=tcp://127.0.0.1:{port}",
     "search.dask_address: no Dask scheduler answers at 'tcp://127.0.0.1:{port}'"),
    ("search.workers=100000", "search.workers: a trial needs about"),
    ("distill.enabled=false", "search.enabled: .* cannot run with distill.enabled: false"),
])
def test_bad_search_input_is_refused_before_any_training(tiny_params, override, message):
    port = free_port()
    params = tiny_params("search.enabled=true", override.format(port=port))
    with pytest.raises(InputError, match=message.format(port=port)):
        check_inputs(params)


def test_an_empty_search_space_is_refused(tiny_params):
    with pytest.raises(InputError, match=r"search.modes = \[\]: the search space needs at least"):
        tiny_params("search.modes=[]")


def test_widths_derive_from_the_teacher(tiny_cnn):
    assert teacher_widths(tiny_cnn) == [0.5]  # its narrowest layer, 8 filters, keeps 4
    import tf_keras as keras

    narrow = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(6), keras.layers.Dense(10)])
    with pytest.raises(InputError, match="narrowest layer has 6 units"):
        teacher_widths(narrow)
