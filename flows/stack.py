"""`shrinkflow up` / `down`: a Prefect server, an MLflow server and the served deployments.

Everything listens on the configured host (127.0.0.1 by default) and keeps its state in the project:
Prefect's database under `.shrinkflow/prefect`, MLflow's in the `tracking.uri` sqlite file with its
artifacts beside it. `up` stays in the foreground; Ctrl-C or `shrinkflow down` stops all three.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.tracking import MLFLOW_UI_ENV, SQLITE, artifact_root
from tasks.config import Params, StackConfig
from tasks.errors import InputError

STATE = Path(".shrinkflow")
PID_FILE = STATE / "stack.pid"
STARTUP_TIMEOUT_S = 300  # Prefect's first start migrates its database: slow on a busy 2-core box
STOP_TIMEOUT_S = 30


def urls(stack: StackConfig) -> tuple[str, str]:
    """The Prefect and MLflow base URLs."""
    return (f"http://{stack.host}:{stack.prefect_port}", f"http://{stack.host}:{stack.mlflow_port}")


def stack_env(stack: StackConfig, root: Path) -> dict[str, str]:
    """Environment for every process of the stack: where Prefect keeps state and is reached."""
    prefect_url, mlflow_url = urls(stack)
    return os.environ | {
        "PREFECT_HOME": str((root / STATE / "prefect").resolve()),
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        MLFLOW_UI_ENV: mlflow_url,
    }


def up(params: Params, stack: StackConfig, root: Path) -> int:
    """Start the stack, print its URLs once both servers answer, wait for Ctrl-C or `down`."""
    if not params.tracking.uri.startswith(SQLITE):
        raise InputError(f"tracking.uri is {params.tracking.uri!r}: `shrinkflow up` serves a local "
                         "sqlite store (sqlite:///mlflow.db); against a remote MLflow, run Prefect only")
    for name, port in (("prefect_port", stack.prefect_port), ("mlflow_port", stack.mlflow_port)):
        _check_free(stack.host, port, name)
    (root / STATE / "prefect").mkdir(parents=True, exist_ok=True)
    env = stack_env(stack, root)
    prefect_url, mlflow_url = urls(stack)
    python = sys.executable
    processes = [
        subprocess.Popen([python, "-m", "prefect", "server", "start", "--host", stack.host,
                          "--port", str(stack.prefect_port)], env=env, cwd=root),
        subprocess.Popen([python, "-m", "mlflow", "server", "--host", stack.host,
                          "--port", str(stack.mlflow_port), "--workers", "1",
                          "--backend-store-uri", params.tracking.uri,
                          "--artifacts-destination", artifact_root(params.tracking.uri)],
                         env=env, cwd=root),
    ]
    try:
        _wait_until_up([f"{prefect_url}/api/health", f"{mlflow_url}/health"], processes)
        processes.append(subprocess.Popen([python, "-m", "flows.cli", "serve"], env=env, cwd=root))
        (root / PID_FILE).write_text(str(os.getpid()))
        print(f"Prefect UI: {prefect_url}\nMLflow UI:  {mlflow_url}\n"
              "Serving deployment compress/nightly. Ctrl-C or `shrinkflow down` stops the stack.",
              flush=True)
        _wait_for_stop(processes)
    finally:
        _stop(processes)
        (root / PID_FILE).unlink(missing_ok=True)
    return 0


def down(root: Path) -> int:
    """Stop the stack started by `up` in this project."""
    path = root / PID_FILE
    if not path.exists():
        print("no stack is running here")
        return 0
    pid = int(path.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        print("no stack is running here (removed a stale pid file)")
        return 0
    deadline = time.monotonic() + STOP_TIMEOUT_S + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    print("stack stopped")
    return 0


def serve(params: Params, stack: StackConfig) -> None:
    """Apply the notification automations, then serve `compress/nightly` on its cron; the
    project's params, with the search on, are the form's defaults.

    The schedule is not paused on shutdown, so it survives a restart of the stack. At most one
    compression runs at a time: further runs wait in Prefect's queue.
    """
    from prefect import serve as prefect_serve
    from prefect.schedules import Cron

    from flows.compress import compress
    from flows.notifications import apply_notifications

    print(apply_notifications(Path.cwd()), flush=True)

    nightly = params.model_dump(mode="json")
    nightly["search"]["enabled"] = True  # a night has time to search (`shrinkflow run` has not)
    deployment = compress.to_deployment(
        name="nightly",
        schedules=[Cron(stack.cron, timezone=stack.timezone)],
        concurrency_limit=1,
        parameters={"params": nightly, "workdir": str(Path.cwd())},
        description="Nightly compression of the configured teacher (params.yaml).",
    )
    prefect_serve(deployment, pause_on_shutdown=False)


def _check_free(host: str, port: int, key: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"stack.{key}: {host}:{port} is in use ({exc.strerror}); stop what "
                             f"listens there or pick another port with --set stack.{key}=PORT") from None


def _wait_until_up(health_urls: list[str], processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(health_urls)
    while pending:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a server of the stack exited during start-up; see its output above")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from {', '.join(pending)} after {STARTUP_TIMEOUT_S} s")
        pending = [url for url in pending if not _answers(url)]
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_for_stop(processes: list[subprocess.Popen]) -> None:
    """Block until SIGINT/SIGTERM, or until a process of the stack dies."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    while not stop and all(p.poll() is None for p in processes):
        time.sleep(0.5)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # lets `serve` deregister cleanly
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
