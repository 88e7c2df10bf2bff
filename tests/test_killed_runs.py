"""A run stopped with SIGTERM at any moment (start-up, training, a search, the record step; a
second signal too) exits within 20 s, ends its own runs and every process it started, and the
next run starts normally (flows/signals.py; tests/test_signals.py: the mechanism on small
processes). A run killed with SIGKILL cannot end its MLflow runs or its Prefect flow run: the next
run in the workspace closes them (MLflow KILLED with a note, Prefect Crashed). A run after that,
with nothing changed, repeats the last one: recorded without Prefect's flow engine or
TensorFlow."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from conftest import TEST_MARK, make_project, wait_until_none_with_mark
from mlflow import MlflowClient
from mlflow.entities import Run
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from flows.record.tracking import CHAMPION, KILLED_TAG, NOTE_TAG, PID_TAG
from flows.record.unchanged import MADE_BY_TAG, last_run_if_unchanged
from flows.workspace.params import load_params
from flows.workspace.versioning import LOCK_FILE, StageStatus

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


STOPPED_WITHIN_S = 20  # the issue's bound from signal to exit; Kubernetes' grace period is 30 s


@dataclass
class Stopped:
    process: subprocess.Popen
    output: str
    took: float  # from the (first) signal to the exit
    left: list[str]  # processes the run started still running after it exited


def run_and_stop(root: Path, ready: Callable[[subprocess.Popen], object], *sets: str,
                 group: bool = False, second_after: float | None = None,
                 own_server: bool = True) -> Stopped:
    """`shrinkflow run --set …` in `root`, in a session of its own; SIGTERM to it (to its process
    group with `group`) once `ready(process)` returns, again `second_after` seconds later. With
    `own_server` the run starts Prefect's temporary server, else it uses the session's."""
    mark = uuid.uuid4().hex
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", TEST_MARK: mark}
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} if own_server else env | {
        "PREFECT_API_URL": PREFECT_API_URL.value()}
    kill = os.killpg if group else os.kill
    with open(root / "run.log", "w") as log:
        process = subprocess.Popen([SHRINKFLOW, "run", *(f"--set={kv}" for kv in sets)], cwd=root,
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            ready(process)
        finally:
            kill(process.pid, signal.SIGTERM)
            sent = time.monotonic()
            if second_after is not None:
                time.sleep(second_after)
                with suppress(ProcessLookupError):
                    kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            finally:
                took = time.monotonic() - sent
                left = wait_until_none_with_mark(mark)
                for line in left:  # not to leave them to the next tests
                    with suppress(ProcessLookupError):
                        os.kill(int(line.split()[0]), signal.SIGKILL)
    return Stopped(process, (root / "run.log").read_text(), took, left)


def assert_stopped(root: Path, stopped: Stopped) -> None:
    """Exit code 143 within 20 s, no process of the run left, the workspace lock released (or
    never taken)."""
    assert stopped.process.returncode == 128 + signal.SIGTERM, stopped.output[-3000:]
    assert stopped.took < STOPPED_WITHIN_S, stopped.took
    assert not stopped.left, stopped.left
    if (root / LOCK_FILE).exists():
        with open(root / LOCK_FILE) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def handles_sigterm(process: subprocess.Popen) -> None:
    """Until the process has a SIGTERM handler of its own (the kernel's SigCgt mask): its Python
    has started and is importing what the run needs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be stopped"
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = re.search(r"SigCgt:\s*([0-9a-f]+)", status)
        if int(caught[1], 16) & 1 << (signal.SIGTERM - 1):
            return
        time.sleep(0.01)
    raise AssertionError("no SIGTERM handler after 60 s")


def in_stage(client: MlflowClient, root: Path, stage: str,
             parents: list[Run]) -> Callable[[subprocess.Popen], None]:
    """Until the run has opened its stage run `stage` (its parent run appended to `parents`),
    then 3 s more: into the stage's work."""
    def wait(process: subprocess.Popen) -> None:
        parents.append(wait_for_stage_run(client, root, process, stage))
        time.sleep(3)
    return wait


def logged(root: Path, text: str, then_s: float = 0.0) -> Callable[[subprocess.Popen], None]:
    """Until the run's log holds `text`, then `then_s` seconds more."""
    def wait(process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while text not in (root / "run.log").read_text():
            assert process.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, f"no {text!r} in the run's log after 300 s"
            time.sleep(0.1)
        time.sleep(then_s)
    return wait


@pytest.mark.parametrize("moment", ["importing", "starting Prefect's server"])
def test_a_sigterm_at_start_up_ends_the_run_and_what_it_started(moment, module_project):
    """Before the flow begins: while modules load (a signal dropped in an import lock's callback
    was lost there, and the run went on), and while the temporary server starts (the run died
    of Python's default handler, and the server was left running under init)."""
    ready = handles_sigterm if moment == "importing" else logged(
        module_project, "Starting temporary server")
    stopped = run_and_stop(module_project, ready)
    assert_stopped(module_project, stopped)


def test_sigterm_to_the_process_group_in_training_ends_the_run_and_what_it_started(
        module_project):
    """As systemd stops a service (and a terminal's Ctrl-C): the signal reaches every process of
    the run's group. The run starts Prefect's temporary server itself, which must outlive the
    signal to record the end, then stop: a clean stop, no hard one."""
    client = MlflowClient(f"sqlite:///{module_project / 'mlflow.db'}")
    parents = []
    stopped = run_and_stop(module_project, in_stage(client, module_project, "distill", parents),
                           "distill.epochs=200", group=True)
    assert_stopped(module_project, stopped)
    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "KILLED" and "TerminationSignal" in parent.data.tags["error"]
    assert {run.info.status for run in stage_runs(client, parent)
            if run.info.run_name == "distill"} == {"KILLED"}
    status = subprocess.run([DVC, "status", "load"], cwd=module_project, capture_output=True,
                            text=True, check=True).stdout
    assert "up to date" in status  # what finished before the signal is intact
    port = int(re.search(r"Stopping temporary server on http://127.0.0.1:(\d+)", stopped.output)[1])
    with socket.socket() as probe:  # stopped after it recorded the end: its port is free again
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert ("Finished in state Crashed('Execution was aborted by a termination signal.')"
            in stopped.output)
    assert "stopping hard" not in stopped.output  # Prefect's own re-sent SIGTERM is no second


def test_a_second_sigterm_in_a_search_stops_it_hard_with_its_dask_workers(
        module_project, prefect_server):
    """SIGTERM to the run's process alone (as Kubernetes sends it to a container's first
    process): the Dask workers get none, the run must end them; a second SIGTERM while the search
    unwinds stops the run hard, its MLflow runs KILLED, its flow run Crashed."""
    client = MlflowClient(f"sqlite:///{module_project / 'mlflow.db'}")
    parents = []
    stopped = run_and_stop(module_project, in_stage(client, module_project, "search", parents),
                           "search.enabled=true", "search.trials=4", "distill.epochs=200",
                           second_after=0.2, own_server=False)
    # the second signal is judged CLAIM_S after it: 1.2 s here; the clean unwind, had it won
    # that race, exits 143 without the hard stop (CI, once: exited 3.6 s after a second at 1 s)
    assert_stopped(module_project, stopped)
    assert "a second SIGTERM: stopping hard" in stopped.output
    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "KILLED"
    assert {run.info.status for run in stage_runs(client, parent)
            if run.info.run_name == "search"} == {"KILLED"}
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(parent.data.tags["prefect.flow_run_id"]))
    assert flow_run.state.type.value == "CRASHED"


def test_a_sigterm_in_the_record_step_leaves_a_workspace_the_next_run_completes(module_project):
    """Stopped while the run is recorded (DVC experiment, MLflow, registry): the stages' outputs
    stay; the next run, with nothing changed, records the run and exits 0."""
    stopped = run_and_stop(module_project, logged(module_project, "recording the run"),
                           "search.enabled=false", "distill.epochs=1")
    assert_stopped(module_project, stopped)
    assert "Task run 'record" in stopped.output and "Crashed" in stopped.output
    rerun = subprocess.run([SHRINKFLOW, "run"], cwd=module_project, capture_output=True, text=True,
                           timeout=600, env={k: v for k, v in os.environ.items()
                                             if k != "PREFECT_API_URL"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "recorded as DVC experiment" in rerun.stdout, rerun.stdout


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
