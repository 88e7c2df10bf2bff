"""A run killed with SIGKILL cannot end its MLflow runs or its Prefect flow run: the next run in the
workspace closes them (MLflow KILLED with a note, Prefect Crashed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

from mlflow import MlflowClient
from mlflow.entities import Run
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from conftest import make_project
from flows.tracking import KILLED_TAG, NOTE_TAG, PID_TAG

SHRINKFLOW = str(Path(sys.executable).parent / "shrinkflow")


def stage_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def wait_for_stage_run(client: MlflowClient, pid: int, victim: subprocess.Popen) -> Run:
    """The parent run of process `pid`, once it has opened a stage run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the run ended before it could be killed"
        experiment = client.get_experiment_by_name("test") if Path("mlflow.db").exists() else None
        parents = client.search_runs([experiment.experiment_id], f"tags.`{PID_TAG}` = '{pid}'"
                                     ) if experiment else []
        if parents and stage_runs(client, parents[0]):
            return parents[0]
        time.sleep(0.5)
    raise AssertionError("no MLflow run with a stage run after 300 s")


def test_the_next_run_closes_a_killed_runs_mlflow_runs_and_flow_run(tmp_path, digits_npz,
                                                                   prefect_server, monkeypatch):
    make_project(tmp_path, digits_npz, "sparsify.enabled=false", "distill.enabled=false")
    monkeypatch.chdir(tmp_path)
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with open("killed.log", "w") as log:
        victim = subprocess.Popen([SHRINKFLOW, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            parent = wait_for_stage_run(client, victim.pid, victim)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # nobody closed it

    done = subprocess.run([SHRINKFLOW, "run"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    note = (f"killed: process {victim.pid} on {socket.gethostname()} ended without closing this "
            "run; noticed by process ")
    closed = client.get_run(parent.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[KILLED_TAG].startswith(note), closed.data.tags
    assert note in closed.data.tags[NOTE_TAG]
    assert note in done.stderr  # the next run says so in its log
    stages = stage_runs(client, closed)
    assert stages and {run.info.status for run in stages} == {"KILLED"}
    latest = client.search_runs([closed.info.experiment_id],
                                "attributes.status = 'FINISHED' and tags.pipeline = 'compress'")
    assert len(latest) == 1 and KILLED_TAG not in latest[0].data.tags  # the new run is untouched

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(closed.data.tags["prefect.flow_run_id"]))
    assert flow_run.state.type.value == "CRASHED"
    assert flow_run.state.message.startswith(note)
