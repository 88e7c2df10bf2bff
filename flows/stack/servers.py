"""`shrinkflow up` / `down`: a Prefect server, an MLflow server and the served deployments
(flows/stack/deployments.py).

Everything listens on the configured host (127.0.0.1 by default). On one machine the state stays
in the project: Prefect's database under `.shrinkflow/prefect`, MLflow's in the `tracking.uri`
sqlite file with its artifacts beside it. A team points `stack.prefect_database` and
`stack.mlflow_backend` at PostgreSQL and `stack.artifacts` at S3; every store is checked before
anything starts. `up` stays in the foreground; Ctrl-C or `shrinkflow down` stops all three.

Auth is on whenever its credentials are in the environment, and required off loopback: Prefect's
server auth string (PREFECT_API_AUTH_STRING, `user:password`) and MLflow's basic-auth app, whose
admin is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the same variables its clients read).
While it runs, `shrinkflow run` in the project sends its flow runs and MLflow logging to it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.record.tracking import MLFLOW_UI_ENV, SQLITE, artifact_root
from flows.workspace.connections import MLFLOW_CREDENTIALS, check_postgres, check_s3
from flows.stack.config import LOOPBACK, Config, StackConfig
from tasks.config import Params
from tasks.errors import InputError

STATE = Path(".shrinkflow")
PID_FILE = STATE / "stack.pid"  # JSON: the `up` process, its URLs and the store it serves
MLFLOW_AUTH_FILE = STATE / "mlflow-auth.ini"  # no secret in it: the admin is in the environment
PREFECT_AUTH = "PREFECT_API_AUTH_STRING"
STARTUP_TIMEOUT_S = 300  # Prefect's first start migrates its database: slow on a busy 2-core box
STOP_TIMEOUT_S = 30


@dataclass(frozen=True)
class RunningStack:
    """What `up` wrote in the pid file once both servers answered."""

    pid: int
    prefect_url: str
    mlflow_url: str
    tracking_uri: str  # the sqlite store its MLflow server serves, by absolute path


def running_stack(root: Path) -> RunningStack | None:
    """The stack `shrinkflow up` runs for the project at `root`, or None when none is up."""
    path = root / PID_FILE
    if not path.exists():
        return None
    stack = RunningStack(**json.loads(path.read_text()))
    try:
        os.kill(stack.pid, 0)
    except ProcessLookupError:
        return None  # killed without a chance to remove its pid file
    return stack


def use_running_stack(root: Path, tracking_uri: str) -> RunningStack | None:
    """Send this process's flow runs to the stack running for `root`, if one is up, and its MLflow
    logging to the stack's server when that serves `tracking_uri`: one process writes the sqlite
    file. Set before Prefect is imported (it reads its settings once)."""
    stack = running_stack(root)
    if stack:
        os.environ["PREFECT_API_URL"] = f"{stack.prefect_url}/api"
        if _absolute(tracking_uri) == stack.tracking_uri:
            os.environ[MLFLOW_UI_ENV] = stack.mlflow_url
    return stack


def urls(stack: StackConfig) -> tuple[str, str]:
    """The Prefect and MLflow base URLs."""
    return (f"http://{stack.host}:{stack.prefect_port}", f"http://{stack.host}:{stack.mlflow_port}")


def stack_env(stack: StackConfig, root: Path) -> dict[str, str]:
    """Environment for every process of the stack: where Prefect keeps state and is reached, where
    the stores are. Passwords stay in the variables they came in (PGPASSWORD, AWS_*, ...)."""
    prefect_url, mlflow_url = urls(stack)
    env = os.environ | {
        "PREFECT_HOME": str((root / STATE / "prefect").resolve()),
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        MLFLOW_UI_ENV: mlflow_url,
    }
    if stack.prefect_database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = stack.prefect_database
    if stack.s3_endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = stack.s3_endpoint
    if PREFECT_AUTH in env:
        env["PREFECT_SERVER_API_AUTH_STRING"] = env[PREFECT_AUTH]
    return env


def check_stack(params: Params, stack: StackConfig) -> None:
    """Everything `up` needs, checked before it starts anything: credentials off loopback, a
    tracking.uri the served runs can log to, reachable stores, free ports."""
    missing = [name for name in (PREFECT_AUTH, *MLFLOW_CREDENTIALS) if not os.environ.get(name)]
    if stack.host not in LOOPBACK and missing:
        raise InputError(f"stack.host is {stack.host}, not loopback: both servers need auth; set "
                         f"{', '.join(missing)} in the environment (see infra/README.md)")
    if params.tracking.uri.startswith(SQLITE) == bool(stack.mlflow_backend):
        raise InputError(
            f"tracking.uri is {params.tracking.uri!r}: `shrinkflow up` serves either the local "
            "sqlite store (tracking.uri sqlite:///FILE, no stack.mlflow_backend) or "
            "stack.mlflow_backend, with tracking.uri the stack's MLflow server "
            f"({urls(stack)[1]}) so that the served runs log there")
    if stack.mlflow_backend and not stack.artifacts:
        raise InputError("stack.mlflow_backend is set but stack.artifacts is not: a shared "
                         "database needs a shared artifact store; set stack.artifacts to s3://...")
    for key in ("prefect_database", "mlflow_backend"):
        if getattr(stack, key):
            check_postgres(f"stack.{key}", getattr(stack, key))
    if stack.artifacts:
        check_s3("stack.artifacts", stack.artifacts, stack.s3_endpoint)
    for name, port in (("prefect_port", stack.prefect_port), ("mlflow_port", stack.mlflow_port)):
        _check_free(stack.host, port, name)


def up(config: Config, root: Path) -> int:
    """Start the stack, print its URLs once both servers answer, wait for Ctrl-C or `down`.
    The `serve` it starts reads the config as `up` did: the same file and `--set`s."""
    params, stack = config.params, config.stack
    check_stack(params, stack)
    (root / STATE / "prefect").mkdir(parents=True, exist_ok=True)
    env = stack_env(stack, root)
    prefect_url, mlflow_url = urls(stack)
    python = sys.executable
    backend = stack.mlflow_backend or params.tracking.uri
    mlflow_auth = _mlflow_auth(root, env) if all(env.get(n) for n in MLFLOW_CREDENTIALS) else []
    processes = [
        subprocess.Popen([python, "-m", "prefect", "server", "start", "--host", stack.host,
                          "--port", str(stack.prefect_port)], env=env, cwd=root),
        subprocess.Popen([python, "-m", "mlflow", "server", "--host", stack.host,
                          "--port", str(stack.mlflow_port), "--workers", "1", *mlflow_auth,
                          "--backend-store-uri", backend,
                          "--artifacts-destination", stack.artifacts or artifact_root(backend)],
                         env=env, cwd=root),
    ]
    try:
        _wait_until_up([f"{prefect_url}/api/health", f"{mlflow_url}/health"], processes)
        if stack.serve:
            processes.append(subprocess.Popen([python, "-m", "flows.cli", "serve", *config.args],
                                              env=env, cwd=root))
        running = RunningStack(os.getpid(), prefect_url, mlflow_url, _absolute(params.tracking.uri))
        (root / PID_FILE).write_text(json.dumps(asdict(running)))
        serving = ("Serving deployment compress/nightly." if stack.serve else
                   "Not serving deployments (stack.serve: false): workers run them.")
        print(f"Prefect UI: {prefect_url}\nMLflow UI:  {mlflow_url}\n{serving} "
              "Ctrl-C or `shrinkflow down` stops the stack.", flush=True)
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
    try:
        os.kill(json.loads(path.read_text())["pid"], signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        print("no stack is running here (removed a stale pid file)")
        return 0
    deadline = time.monotonic() + STOP_TIMEOUT_S + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    print("stack stopped")
    return 0


def _mlflow_auth(root: Path, env: dict[str, str]) -> list[str]:
    """MLflow's basic-auth app: its users in `.shrinkflow/mlflow-auth.db`, its admin the
    environment's MLflow credentials (read only on the first start; then change it by the API)."""
    path = root / MLFLOW_AUTH_FILE
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{path.with_suffix('.db').resolve()}\n")
    # Signs the CSRF tokens of the auth app's forms; one per start unless the team sets its own
    # (it must when several MLflow server processes share the load).
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(path.resolve()),
            "MLFLOW_AUTH_ADMIN_USERNAME": env[MLFLOW_CREDENTIALS[0]],
            "MLFLOW_AUTH_ADMIN_PASSWORD": env[MLFLOW_CREDENTIALS[1]]}
    return ["--app-name", "basic-auth"]


def _absolute(tracking_uri: str) -> str:
    """A sqlite URI by the database file's absolute path (a relative one is relative to the cwd);
    a server URI as it is."""
    if not tracking_uri.startswith(SQLITE):
        return tracking_uri
    return SQLITE + str(Path(tracking_uri.removeprefix(SQLITE)).resolve())


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
