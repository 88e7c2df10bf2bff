"""A run stopped with SIGTERM (during training, during a search) ends its own runs and stops what it
started. A run killed with SIGKILL cannot end its MLflow runs or its Prefect flow run: the next run
in the workspace closes them (MLflow KILLED with a note, Prefect Crashed). A run after that, with
nothing changed, repeats the last one: recorded without Prefect's flow engine or TensorFlow."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from conftest import make_project
from mlflow import MlflowClient
from mlflow.entities import Run
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from flows.record.tracking import CHAMPION, KILLED_TAG, NOTE_TAG, PID_TAG
from flows.record.unchanged import MADE_BY_TAG, last_run_if_unchanged
from flows.workspace.params import load_params
from flows.workspace.versioning import StageStatus

SHRINKFLOW = str(Path(sys.executable).parent / "shrinkflow")
DVC = str(Path(sys.executable).parent / "dvc")


def stage_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def wait_for_stage_run(client: MlflowClient, root: Path, victim: subprocess.Popen,
                       stage: str | None = None) -> Run:
    """The parent run of the `victim` process, once it has opened a stage run (named `stage`)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the run ended before it could be killed"
        database = (root / "mlflow.db").exists()
        experiment = client.get_experiment_by_name("test") if database else None
        parents = client.search_runs([experiment.experiment_id],
                                     f"tags.`{PID_TAG}` = '{victim.pid}'") if experiment else []
        if parents and any(stage in (None, run.info.run_name)
                           for run in stage_runs(client, parents[0])):
            return parents[0]
        time.sleep(0.5)
    raise AssertionError(f"no MLflow run with a stage run {stage or ''} after 300 s")


def alive_in_group(group: int) -> list[str]:
    """The processes of process group `group` that still run (zombies, dead but not yet reaped
    by init, are not), as `pid command`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:  # gone meanwhile
            continue
        command, fields = rest.rsplit(") ", 1)
        state, _parent, pgrp = fields.split()[:3]
        if int(pgrp) == group and state != "Z":
            alive.append(f"{pid} {command}")
    return alive


@pytest.mark.parametrize("stage, overrides, own_server", [
    ("distill", ("distill.epochs=200",), True),
    ("search", ("search.enabled=true", "search.trials=4", "distill.epochs=200"), False),
], ids=["training", "search"])
def test_sigterm_to_the_process_group_ends_the_run_and_what_it_started(
        stage, overrides, own_server, tmp_path, digits_npz, prefect_server):
    """As systemd stops a service (and a terminal's Ctrl-C): the signal reaches every process of
    the run's group, Dask workers included. With `own_server` the run starts Prefect's temporary
    server itself, which must outlive the signal to record the end, then stop."""
    make_project(tmp_path, digits_npz, *overrides)
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} if own_server else env | {
        "PREFECT_API_URL": PREFECT_API_URL.value()}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with open(tmp_path / "run.log", "w") as log:
        victim = subprocess.Popen([SHRINKFLOW, "run"], cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            parent = wait_for_stage_run(client, tmp_path, victim, stage)
            time.sleep(3)  # into its training
        finally:
            os.killpg(victim.pid, signal.SIGTERM)
            grace = time.monotonic() + 30  # Kubernetes' grace period; measured: README
            victim.wait(timeout=30)
    output = (tmp_path / "run.log").read_text()
    assert victim.returncode == 128 + signal.SIGTERM, output[-3000:]
    while alive_in_group(victim.pid) and time.monotonic() < grace:  # workers got it too
        time.sleep(0.5)
    assert not alive_in_group(victim.pid)  # no Dask worker, no trial left running
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "KILLED" and "TerminationSignal" in parent.data.tags["error"]
    assert {run.info.status for run in stage_runs(client, parent)
            if run.info.run_name == stage} == {"KILLED"}
    with open(tmp_path / ".shrinkflow" / "run.lock") as lock:  # released
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    status = subprocess.run([DVC, "status", "load"], cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout
    assert "up to date" in status  # what finished before the signal is intact
    if own_server:  # stopped after it recorded the end: its port is free again
        port = int(re.search(r"Stopping temporary server on http://127.0.0.1:(\d+)", output)[1])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert "Finished in state Crashed('Execution was aborted by a termination signal.')" in output
    else:
        with get_client(sync_client=True) as prefect:
            flow_run = prefect.read_flow_run(UUID(parent.data.tags["prefect.flow_run_id"]))
        assert flow_run.state.type.value == "CRASHED"


@dataclass(frozen=True)
class KilledAndRerun:
    root: Path
    env: dict[str, str]
    client: MlflowClient
    victim_pid: int
    killed: Run  # as it was just before the next run
    rerun: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory, digits_npz, prefect_server) -> KilledAndRerun:
    """A real `shrinkflow run` killed with SIGKILL once it runs a stage, then a second run."""
    root = tmp_path_factory.mktemp("killed")
    make_project(root, digits_npz, "sparsify.enabled=false", "distill.enabled=false")
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    with open(root / "killed.log", "w") as log:
        victim = subprocess.Popen([SHRINKFLOW, "run"], cwd=root, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            parent = wait_for_stage_run(client, root, victim)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
    killed = client.get_run(parent.info.run_id)
    rerun = subprocess.run([SHRINKFLOW, "run"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return KilledAndRerun(root, env, client, victim.pid, killed, rerun)


def test_the_next_run_closes_a_killed_runs_mlflow_runs_and_flow_run(killed_and_rerun):
    k = killed_and_rerun
    assert k.killed.info.status == "RUNNING"  # nobody closed it before the next run
    note = (f"killed: process {k.victim_pid} on {socket.gethostname()} ended without closing "
            "this run; noticed by process ")
    closed = k.client.get_run(k.killed.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[KILLED_TAG].startswith(note), closed.data.tags
    assert note in closed.data.tags[NOTE_TAG]
    assert note in k.rerun.stderr  # the next run says so in its log
    stages = stage_runs(k.client, closed)
    assert stages and {run.info.status for run in stages} == {"KILLED"}
    latest = k.client.search_runs([closed.info.experiment_id],
                                  "attributes.status = 'FINISHED' and tags.pipeline = 'compress'")
    assert len(latest) == 1 and KILLED_TAG not in latest[0].data.tags  # the new run is untouched

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(closed.data.tags["prefect.flow_run_id"]))
    assert flow_run.state.type.value == "CRASHED"
    assert flow_run.state.message.startswith(note)


def test_a_run_with_nothing_changed_repeats_the_last_one_without_prefect_or_tensorflow(
        killed_and_rerun):
    """Recorded as a repeat: no Prefect flow to run, no TensorFlow, no new registry version; the
    MLflow run carries the last run's metrics, DVC experiment and gate decision and names it, and
    the Prefect server of the environment shows a Completed flow run."""
    k = killed_and_rerun
    versions = len(k.client.search_model_versions("name = 'test-int8'"))
    noop = subprocess.run([sys.executable, "-X", "importtime", SHRINKFLOW, "run"], cwd=k.root,
                          env=k.env, capture_output=True, text=True, timeout=300)
    assert noop.returncode == 0, noop.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in noop.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mlflow" in imported and not imported & {"tensorflow", "tf_keras", "sklearn", "prefect",
                                                    "tensorflow_model_optimization", "matplotlib"}
    repeat, made = k.client.search_runs([k.killed.info.experiment_id],
                                        "attributes.status = 'FINISHED' and tags.pipeline = 'compress'",
                                        order_by=["attributes.start_time DESC"])[:2]
    assert repeat.data.tags[MADE_BY_TAG] == made.info.run_id
    assert "all stages up to date: nothing re-ran" in noop.stdout
    assert f"unchanged since MLflow run {made.info.run_id}: its model, version 1" in noop.stdout
    assert repeat.info.run_id in noop.stdout and repeat.data.metrics == made.data.metrics
    assert repeat.data.params == made.data.params
    assert {key: repeat.data.tags[key] for key in ("dvc.experiment", "gate.decision")} == {
        key: made.data.tags[key] for key in ("dvc.experiment", "gate.decision")}
    experiments = subprocess.run([DVC, "exp", "list", "--name-only"], cwd=k.root,
                                 capture_output=True, text=True, check=True).stdout.split()
    assert repeat.data.tags["dvc.experiment"] in experiments
    assert len(k.client.search_model_versions("name = 'test-int8'")) == versions
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(repeat.data.tags["prefect.flow_run_id"]))
    assert flow_run.state.type.value == "COMPLETED" and flow_run.flow_id


def test_a_moved_champion_or_new_params_mean_the_run_is_no_repeat(killed_and_rerun, monkeypatch):
    """The repeat is refused when its gate decision could differ (the champion moved since) or a
    stage would run (a param changed): the run then runs, or at least gates, again."""
    k = killed_and_rerun
    monkeypatch.chdir(k.root)  # the project's relative sqlite URI
    params = load_params(Path("params.yaml"), [])
    assert last_run_if_unchanged(params, Path("."), StageStatus(Path(".")))
    champion = k.client.get_model_version_by_alias("test-int8", CHAMPION).version
    k.client.delete_registered_model_alias("test-int8", CHAMPION)
    try:
        assert last_run_if_unchanged(params, Path("."), StageStatus(Path("."))) is None
    finally:
        k.client.set_registered_model_alias("test-int8", CHAMPION, champion)
    edited = load_params(Path("params.yaml"), ["evaluate.latency_runs=250"])
    assert last_run_if_unchanged(edited, Path("."), StageStatus(Path("."))) is None
