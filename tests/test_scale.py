"""The team stack for real: a PostgreSQL cluster and an S3-compatible server (moto's, a separate
process) started here, `shrinkflow up` on them with auth on, `shrinkflow deploy` to a process work
pool and a real `prefect worker` running the compress flow; DVC pushes to S3 and a fresh clone
pulls; the champion loads from MLflow with its artifacts on S3; Postgres restarts between two
runs; and the bad inputs, each refused with the key, the URL and the fix."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, make_project
from flows.workspace.params import load_params
from tasks.splits import Dataset
from tasks.errors import InputError
from tasks.tflite import TFLiteClassifier
from test_stack import SHRINKFLOW, free_port

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_USER = "shrinkflow"
BUCKET = "shrinkflow"
POOL = "shrinkflow"  # infra/prefect.yaml's work pool
MODEL = "test-int8"
CREDENTIALS = {  # what a team puts in the environment of every process (infra/README.md)
    "PGPASSWORD": secrets.token_hex(8),
    "AWS_ACCESS_KEY_ID": "shrinkflow-test",
    "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
    "AWS_DEFAULT_REGION": "us-east-1",
    "MLFLOW_TRACKING_USERNAME": "team",
    "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(8),
    "PREFECT_API_AUTH_STRING": f"team:{secrets.token_hex(8)}",
}


@dataclass(frozen=True)
class Postgres:
    home: Path
    port: int

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        """pg_ctl; the server's output goes to its log (an inherited pipe would never close)."""
        as_postgres_user(PG_BIN / "pg_ctl", "-D", self.home / "data", "-l", self.home / "log",
                         "-w", *args)


def as_postgres_user(*command: str | Path) -> None:
    """initdb and postgres refuse to run as root: as root, run them as the `postgres` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *map(str, command)], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def environment():
    """The credentials in this process's environment too (the in-process checks read them)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        yield os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def postgres(environment) -> Postgres:
    """A fresh cluster with password (SCRAM) auth on a free port, databases prefect and mlflow."""
    import psycopg

    home = Path(tempfile.mkdtemp(prefix="shrinkflow-pg-"))  # pytest's tmp is root-only
    (home / "password").write_text(CREDENTIALS["PGPASSWORD"])
    if os.geteuid() == 0:
        for path in (home, home / "password"):
            shutil.chown(path, "postgres")
    as_postgres_user(PG_BIN / "initdb", "-D", home / "data", "-U", DB_USER, "-A", "scram-sha-256",
                     "--pwfile", home / "password", "--no-sync")
    server = Postgres(home, free_port())
    server.ctl("-o", f"-p {server.port} -k {home} -h 127.0.0.1", "start")
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        for database in ("prefect", "mlflow"):  # outside a transaction, hence autocommit
            connection.execute(f"CREATE DATABASE {database}")
    yield server
    server.ctl("-m", "fast", "stop")
    shutil.rmtree(home)


@pytest.fixture(scope="module")
def s3(environment) -> str:
    """moto's S3 server as its own process on a free port, with the bucket; its endpoint URL."""
    import boto3

    port = free_port()
    process = subprocess.Popen([BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            assert time.monotonic() < deadline and process.poll() is None, "moto did not start"
            time.sleep(0.5)
    yield endpoint
    process.terminate()
    process.wait(timeout=30)


@dataclass(frozen=True)
class Team:
    root: Path
    prefect: str
    mlflow: str
    env: dict[str, str]


def request(url: str, body: dict | None = None, auth: str | None = None) -> dict:
    """JSON over HTTP with basic auth (`user:password`); GET without a body."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as answer:
        return json.load(answer)


def prefect_api(team: Team, endpoint: str, body: dict | None = None) -> dict:
    return request(f"{team.prefect}/api/{endpoint}", body, CREDENTIALS["PREFECT_API_AUTH_STRING"])


def mlflow_api(team: Team, endpoint: str, body: dict | None = None) -> dict:
    auth = f"{CREDENTIALS['MLFLOW_TRACKING_USERNAME']}:{CREDENTIALS['MLFLOW_TRACKING_PASSWORD']}"
    return request(f"{team.mlflow}/api/2.0/mlflow/{endpoint}", body, auth)


def run_cli(team: Team, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=cwd or team.root, env=team.env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def team(tmp_path_factory, digits_npz, postgres, s3, environment) -> Team:
    """A project on the team stack: `shrinkflow up` with Prefect and MLflow on Postgres, MLflow's
    artifacts and the DVC remote on S3, auth on; the deployment on a process work pool."""
    root = tmp_path_factory.mktemp("team")
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    prefect_port, mlflow_port = free_port(), free_port()
    prefect, mlflow = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    make_project(root, digits_npz, f"tracking.uri={mlflow}")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["stack"] |= {  # beside its stack.cron
        "prefect_port": prefect_port, "mlflow_port": mlflow_port, "serve": False,
        "prefect_database": postgres.url("prefect", "postgresql+asyncpg"),
        "mlflow_backend": postgres.url("mlflow"),
        "artifacts": f"s3://{BUCKET}/mlflow", "s3_endpoint": s3,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = environment | {"PREFECT_API_URL": f"{prefect}/api"}
    for args in (["remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"],
                 ["remote", "modify", "storage", "endpointurl", s3]):
        subprocess.run([BIN / "dvc", *args], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qam", "DVC remote on S3"], cwd=root, check=True)

    log = open(root / "up.log", "w")
    up = subprocess.Popen([SHRINKFLOW, "up"], cwd=root, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    stack = Team(root, prefect, mlflow, env)
    deadline = time.monotonic() + 400
    while not ((root / ".shrinkflow" / "stack.pid").exists() and answers(stack)):
        assert up.poll() is None and time.monotonic() < deadline, (root / "up.log").read_text()
        time.sleep(2)
    yield stack
    subprocess.run([SHRINKFLOW, "down"], cwd=root, env=env, check=True, timeout=120)
    assert up.wait(timeout=60) == 0
    log.close()


def answers(team: Team) -> bool:
    try:
        prefect_api(team, "health")
        mlflow_api(team, "experiments/search?max_results=1")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def worker(team: Team):
    """A real worker on a process pool (it creates the pool), and infra/prefect.yaml deployed to
    it by `shrinkflow deploy`."""
    log = open(team.root / "worker.log", "w")
    process = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", POOL, "--type", "process"], cwd=team.root,
        env=team.env | {"PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not prefect_api(team, "work_pools/filter", {}):
        assert process.poll() is None and time.monotonic() < deadline, \
            (team.root / "worker.log").read_text()
        time.sleep(2)
    deployed = run_cli(team, SHRINKFLOW, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    (deployment,) = prefect_api(team, "deployments/filter", {})
    yield deployment
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:  # Prefect's worker can hang in its shutdown on a busy box
        process.kill()
        process.wait()
    log.close()


def run_deployment(team: Team, deployment: dict) -> dict:
    """A run of the deployment with its defaults (the project's params), as a schedule starts it
    but with the search off; the finished flow run."""
    params = copy.deepcopy(deployment["parameters"]["params"])
    assert params["search"]["enabled"]  # the nightly searches by default (search: test_search.py)
    params["search"]["enabled"] = False
    run = prefect_api(team, f"deployments/{deployment['id']}/create_flow_run",
                      {"parameters": {"params": params}})
    deadline = time.monotonic() + 600
    while run["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, (team.root / "worker.log").read_text()[-5000:]
        time.sleep(2)
        run = prefect_api(team, f"flow_runs/{run['id']}")
    assert run["state"]["type"] == "COMPLETED", (team.root / "worker.log").read_text()[-5000:]
    return run


@pytest.fixture(scope="module")
def first_run(team: Team, worker: dict) -> dict:
    return run_deployment(team, worker)


def mlflow_runs(team: Team, filter_string: str) -> list[dict]:
    experiment = mlflow_api(team, "experiments/get-by-name?experiment_name=test")["experiment"]
    return mlflow_api(team, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                            "filter": filter_string}).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"]["tags"]}


def rows(postgres: Postgres, database: str, query: str, *args: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(postgres.url(database)) as connection:
        return connection.execute(query, args).fetchall()


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_worker_run_is_recorded_in_postgres_with_its_artifacts_on_s3(team, first_run, postgres,
                                                                       s3):
    (parent,) = mlflow_runs(team, f"tags.`prefect.flow_run_id` = '{first_run['id']}'")
    run_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert tags(parent)["dvc.experiment"] == first_run["name"]
    assert tags(parent)["dvc.remote"] == "storage"
    logged = {param["key"]: param["value"] for param in parent["data"]["params"]}
    assert logged["model.epochs"] == "1"  # the project's params.yaml, made the defaults by deploy
    # Both servers keep their state in Postgres, not in a sqlite file of the project.
    assert rows(postgres, "prefect", "SELECT state_type FROM flow_run WHERE id = %s",
                first_run["id"]) == [("COMPLETED",)]
    assert rows(postgres, "mlflow", "SELECT status FROM runs WHERE run_uuid = %s",
                run_id) == [("FINISHED",)]
    assert not list(team.root.glob("*.db"))
    # MLflow's artifacts are on S3; the client never needed the S3 keys (the server proxies).
    stored = s3_keys(s3, "mlflow/")
    assert any(key.endswith(f"{run_id}/artifacts/model.tflite") for key in stored), stored
    # No secret reached the configuration or the MLflow params.
    recorded = (team.root / "params.yaml").read_text() + (team.root / ".dvc" / "config").read_text()
    recorded += json.dumps(parent["data"]["params"])
    assert not [name for name, value in CREDENTIALS.items() if value in recorded]


def test_dvc_pushed_the_run_to_s3_and_a_fresh_clone_pulls_it(team, first_run, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", team.root, clone], check=True)
    experiment = first_run["name"]
    for args in (["exp", "pull", "origin", experiment], ["exp", "apply", experiment], ["pull"]):
        done = run_cli(team, BIN / "dvc", *args, cwd=clone)
        assert done.returncode == 0, done.stdout + done.stderr
    model = "artifacts/model.tflite"
    assert (clone / model).read_bytes() == (team.root / model).read_bytes()


def test_the_champion_loads_from_mlflow_with_its_artifacts_on_s3(team, first_run, tmp_path):
    assert mlflow_api(team, f"registered-models/alias?name={MODEL}&alias=champion")[
        "model_version"]["version"] == "1"
    data = Dataset.load(team.root / "artifacts" / "splits.json")
    np.save(tmp_path / "x.npy", data.test.read())
    script = ("import mlflow, numpy as np, sys; "
              f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion'); "
              "np.save(sys.argv[2], m.predict(np.load(sys.argv[1])))")
    env = team.env | {"MLFLOW_TRACKING_URI": team.mlflow, "AWS_SECRET_ACCESS_KEY": "not-needed"}
    subprocess.run([sys.executable, "-c", script, "x.npy", "y.npy"], cwd=tmp_path, env=env,
                   check=True, timeout=300)
    expected = TFLiteClassifier((team.root / "artifacts" / "model.tflite").read_bytes())
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected.predict(data.test.read()))


def test_a_postgres_restart_between_runs_loses_nothing(team, worker, first_run, postgres):
    postgres.ctl("-m", "fast", "restart")
    second = run_deployment(team, worker)
    runs = mlflow_runs(team, "tags.pipeline = 'compress'")
    by_flow_run = {tags(run)["prefect.flow_run_id"]: run["info"]["status"] for run in runs}
    assert by_flow_run == {first_run["id"]: "FINISHED", second["id"]: "FINISHED"}
    for flow_run in (first_run, second):  # the schedule's future runs are there too
        assert rows(postgres, "prefect", "SELECT state_type FROM flow_run WHERE id = %s",
                    flow_run["id"]) == [("COMPLETED",)]


def test_requests_without_the_right_credentials_are_refused_by_both_servers(team):
    prefect = (f"{team.prefect}/api/flow_runs/filter", {})  # POST
    mlflow = (f"{team.mlflow}/api/2.0/mlflow/experiments/search?max_results=1", None)  # GET
    for (url, body), auth in [(server, auth) for server in (prefect, mlflow)
                              for auth in (None, "team:wrong")]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(url, body, auth)
        assert refused.value.code == 401, (url, auth)


def test_wrong_mlflow_credentials_are_refused_before_a_run_trains(team, monkeypatch):
    from flows.stages import check_inputs

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(InputError) as refused:
        check_inputs(load_params(team.root / "params.yaml"))
    assert str(refused.value) == (
        f"tracking.uri: {team.mlflow} refused the credentials (HTTP 401); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server")


def test_a_work_pool_that_does_not_exist_is_refused_by_deploy(team, tmp_path):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows.stack.deployments import check_work_pools

    prefect_file = yaml.safe_load((team.root / "infra" / "prefect.yaml").read_text())
    prefect_file["deployments"][0]["work_pool"]["name"] = "nowhere"
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(prefect_file))
    with temporary_settings({PREFECT_API_URL: f"{team.prefect}/api",
                             PREFECT_API_AUTH_STRING: CREDENTIALS["PREFECT_API_AUTH_STRING"]}):
        with pytest.raises(InputError) as refused:
            check_work_pools(tmp_path / "prefect.yaml")
        check_work_pools(team.root / "infra" / "prefect.yaml")  # the real one: its pool exists
    assert ("deployment 'nightly' names work pool 'nowhere', which does not exist on "
            f"{team.prefect}/api; create it with `prefect work-pool create nowhere --type process`"
            ) in str(refused.value)


def test_unreachable_or_refusing_stores_are_named_before_anything_starts(postgres, s3, tmp_path,
                                                                         monkeypatch):
    from flows.stack.config import Config, StackConfig
    from flows.stack.servers import up
    from tasks.config import Params

    closed = free_port()
    team_params = Params(tracking={"uri": f"http://127.0.0.1:{free_port()}"})
    cases = {
        f"stack.mlflow_backend: cannot connect to PostgreSQL at postgresql://{DB_USER}@127.0.0.1:"
        f"{closed}/mlflow": {"mlflow_backend": f"postgresql://{DB_USER}@127.0.0.1:{closed}/mlflow"},
        f"stack.artifacts: cannot reach S3 at s3://{BUCKET}/a (endpoint http://127.0.0.1:{closed})":
            {"artifacts": f"s3://{BUCKET}/a", "s3_endpoint": f"http://127.0.0.1:{closed}"},
        f"stack.artifacts: S3 refused s3://missing/a (endpoint {s3}) (404); create the bucket":
            {"artifacts": "s3://missing/a", "s3_endpoint": s3},
    }
    for message, stack in cases.items():
        stack = {"mlflow_backend": postgres.url("mlflow"), "artifacts": f"s3://{BUCKET}/a",
                 "s3_endpoint": s3} | stack
        with pytest.raises(InputError) as refused:
            up(Config(team_params, StackConfig(**stack, prefect_port=free_port(),
                                               mlflow_port=free_port()), ()), tmp_path)
        assert message in str(refused.value)
    monkeypatch.setenv("PGPASSWORD", "wrong")
    database = postgres.url("prefect", "postgresql+asyncpg")
    with pytest.raises(InputError, match="password authentication failed.*set PGPASSWORD"):
        up(Config(Params(), StackConfig(prefect_database=database, prefect_port=free_port(),
                                        mlflow_port=free_port()), ()), tmp_path)
    assert not (tmp_path / ".shrinkflow").exists()


def test_an_unreachable_dvc_remote_or_missing_bucket_is_refused_before_training(tmp_path, s3,
                                                                                digits_npz):
    from dvc.repo import Repo

    from flows.workspace.versioning import open_repo

    make_project(tmp_path, digits_npz)
    closed = f"http://127.0.0.1:{free_port()}"
    for endpoint, bucket, problem in ((closed, BUCKET, f"cannot reach S3 at s3://{BUCKET}/dvc "
                                       f"(endpoint {closed})"),
                                      (s3, "missing", "S3 refused s3://missing/dvc")):
        with Repo(str(tmp_path)) as repo, repo.config.edit() as config:
            config["remote"]["storage"] = {"url": f"s3://{bucket}/dvc", "endpointurl": endpoint}
            config["core"]["remote"] = "storage"
        with pytest.raises(InputError, match=re.escape(f"DVC remote 'storage' (.dvc/config): "
                                                       f"{problem}")):
            open_repo(tmp_path)


def test_an_unreachable_tracking_database_fails_the_run_before_training(tmp_path):
    from flows.stages import check_inputs

    url = f"postgresql://{DB_USER}@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(InputError, match=f"tracking.uri: cannot connect to PostgreSQL at {url}"):
        check_inputs(load_params(overrides=[f"tracking.uri={url}"]))


def test_a_password_in_a_url_is_refused_without_repeating_it(tmp_path, monkeypatch):
    from flows.stack.config import Config, StackConfig, load_config
    from flows.stack.servers import up
    from tasks.config import Params

    with pytest.raises(InputError) as refused:
        load_params(overrides=["tracking.uri=http://team:s3cret@mlflow.example:5000"])
    assert "tracking.uri: holds a password" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(InputError, match="stack.mlflow_backend: holds a password"):
        load_config(overrides=["stack.mlflow_backend=postgresql://u:pw@db/mlflow"])
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match="stack.host is 0.0.0.0, not loopback: both servers need "
                       "auth; set PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME, "
                       "MLFLOW_TRACKING_PASSWORD"):
        up(Config(Params(), StackConfig(host="0.0.0.0"), ()), tmp_path)


INFRA = REPO / "infra"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def readme_table(first_column: str) -> dict[str, list[str]]:
    """The rows of infra/README.md's table whose header starts with `first_column`."""
    lines = (INFRA / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            return rows
        name, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = cells


def test_the_compose_file_names_only_its_services_and_says_what_the_readme_says():
    text = (INFRA / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]  # the worker's anchor is merged here
    table = readme_table("service")
    assert set(table) == set(services)
    for name, service in services.items():
        image, port, _ = table[name]
        assert service["image"] == image, name
        published = [mapping.split(":")[0] for mapping in service.get("ports", [])]
        assert published == ([] if port == "-" else [port]), name
        assert set(service.get("depends_on", [])) <= set(services), name
    for host, port in re.findall(r"(?:://|@)([a-z][a-z0-9-]*):(\d+)", text):
        assert host in services and table[host][1] == port, (host, port)  # in-network URLs
    secrets_used = set(re.findall(r"\$\{(\w+):\?", text))
    assert secrets_used == set(readme_table("variable"))
    assert f"--pool {POOL} " in services["worker"]["command"] + " "
    prefect_file = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in prefect_file["deployments"]} == {POOL}


def test_the_image_is_built_from_the_lock_with_the_makefiles_uv():
    dockerfile = (INFRA / "Dockerfile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M)[1]
    assert f"ghcr.io/astral-sh/uv:{uv_version} " in dockerfile
    assert "COPY pyproject.toml uv.lock" in dockerfile
    assert dockerfile.count("uv sync --frozen --no-dev") == 2


@pytest.mark.parametrize("template", ["k8s-work-pool.json", "docker-work-pool.json"])
def test_a_work_pool_job_template_fills_every_placeholder_from_its_variables(template):
    base = json.loads((INFRA / template).read_text())
    assert set(base) == {"job_configuration", "variables"}  # Prefect's base_job_template
    used = set(PLACEHOLDER.findall(json.dumps(base["job_configuration"])))
    properties = base["variables"]["properties"]
    assert used <= set(properties), used - set(properties)
    assert {"command", "env", "image"} <= used
    assert properties["image"]["default"] == readme_table("service")["worker"][0]
