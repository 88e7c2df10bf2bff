"""The local stack for real: `shrinkflow up` on free ports, a run triggered through the Prefect API as
the UI's Run button does, checked through the MLflow REST API, the registry gate, a browser, new
data picked up by the deployment, and the notifications a real local webhook receives."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import numpy as np
import pytest

from conftest import QUIET_CRON, REPO, make_project
from flows.stages import STAGES
from tasks.splits import Dataset
from tasks.tflite import TFLiteClassifier
from test_input_changes import digits_npz

SHRINKFLOW = str(Path(sys.executable).parent / "shrinkflow")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'  # MLflow 3.17's
MODEL = "test-int8"
TIMEZONE = "Europe/Berlin"  # not the default (UTC): the schedule is the one given


@dataclass(frozen=True)
class Stack:
    root: Path
    prefect: str
    mlflow: str
    deployment_id: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, body: dict | None = None, tries: int = 5) -> dict:
    """The JSON answer of a GET (or a POST of `body`). A 503 is retried, as Prefect's own client
    does: Prefect's server answers 503 for errors it calls retryable, such as its SQLite database
    locked by another writer (seen once on a loaded box: the module's 8 tests errored)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == tries - 1:
                raise
            time.sleep(2**attempt)


def mlflow_api(stack: Stack, endpoint: str, body: dict | None = None, **query: str) -> dict:
    url = f"{stack.mlflow}/api/2.0/mlflow/{endpoint}"
    return get_json(f"{url}?{urllib.parse.urlencode(query)}" if query else url, body)


class Webhook(ThreadingHTTPServer):
    """A real HTTP receiver on loopback: keeps the JSON body of every POST."""

    def __init__(self):
        self.messages: list[dict] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"

    def about(self, run_name: str, timeout: float = 180) -> list[dict]:
        """The messages naming `run_name`, once at least one has arrived."""
        deadline = time.monotonic() + timeout
        while not any(run_name in m["text"] for m in self.messages):
            assert time.monotonic() < deadline, f"no message about {run_name}: {self.messages}"
            time.sleep(1)
        time.sleep(3)  # a duplicate would arrive about as fast
        return [m for m in self.messages if run_name in m["text"]]


@pytest.fixture(scope="module")
def webhook() -> Webhook:
    server = Webhook()
    Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def nightly_project(tmp_path_factory) -> Path:
    """A project whose data file the nightly job refreshes in place."""
    root = tmp_path_factory.mktemp("project")
    make_project(root, digits_npz(root / "nightly.npz", start=0))
    return root


@pytest.fixture(scope="module")
def stack(nightly_project: Path, webhook: Webhook) -> Stack:
    prefect_port, mlflow_port = free_port(), free_port()
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        "SHRINKFLOW_NOTIFY_URL": webhook.url}
    log = open(nightly_project / "up.log", "w")
    process = subprocess.Popen(
        [SHRINKFLOW, "up", "--set", f"stack.prefect_port={prefect_port}",
         "--set", f"stack.mlflow_port={mlflow_port}", "--set", f"stack.timezone={TIMEZONE}"],
        cwd=nightly_project, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    prefect = f"http://127.0.0.1:{prefect_port}"
    deadline = time.monotonic() + 400
    deployments: list = []
    while not deployments:
        assert process.poll() is None, (nightly_project / "up.log").read_text()
        assert time.monotonic() < deadline, (nightly_project / "up.log").read_text()
        time.sleep(2)
        try:
            deployments = get_json(f"{prefect}/api/deployments/filter", {})
        except OSError:
            pass
    yield Stack(nightly_project, prefect, f"http://127.0.0.1:{mlflow_port}", deployments[0]["id"])
    subprocess.run([SHRINKFLOW, "down"], cwd=nightly_project, env=env, check=True, timeout=120)
    assert process.wait(timeout=60) == 0
    log.close()


def trigger(stack: Stack, temperature: float = 3.0, data_source: str | None = None,
            latency_runs: int | None = None) -> str:
    """What the UI's custom Run does: the form's parameters, some edited, sent to the deployment
    (its other parameters, `repeat_unchanged` among them, as deployed)."""
    deployment = get_json(f"{stack.prefect}/api/deployments/{stack.deployment_id}")
    params = deployment["parameters"]["params"]
    assert params["search"]["enabled"]  # the nightly searches by default...
    params["search"]["enabled"] = False  # ...these tests check the stack (search: test_search.py)
    params["distill"]["temperature"] = temperature
    params["data"]["source"] = data_source or params["data"]["source"]
    params["evaluate"]["latency_runs"] = latency_runs or params["evaluate"]["latency_runs"]
    return create_flow_run(stack, params)["id"]


def create_flow_run(stack: Stack, params: dict) -> dict:
    """POST the run as the UI does (the REST API: a client here would start its own server)."""
    return get_json(f"{stack.prefect}/api/deployments/{stack.deployment_id}/create_flow_run",
                    {"parameters": {"params": params}})


def wait_for(stack: Stack, flow_run_id: str) -> dict:
    deadline = time.monotonic() + 600
    while True:
        run = get_json(f"{stack.prefect}/api/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, run["state"]
        time.sleep(2)


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> dict:
    run = wait_for(stack, trigger(stack, temperature=3.0))
    assert run["state"]["type"] == "COMPLETED", (stack.root / "up.log").read_text()[-5000:]
    return run


def mlflow_parent_run(stack: Stack, flow_run_id: str) -> dict:
    experiment = mlflow_api(stack, "experiments/get-by-name", experiment_name="test")["experiment"]
    found = mlflow_api(stack, "runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    })["runs"]
    assert len(found) == 1
    return found[0]


def as_dict(entries: list[dict]) -> dict:
    return {entry["key"]: entry["value"] for entry in entries}


def test_up_serves_the_nightly_on_the_schedule_of_its_params_and_overrides(stack):
    """stack.cron from params.yaml (conftest), stack.timezone from `up --set`: the `serve` that
    `up` starts reads the config as `up` did."""
    deployment = get_json(f"{stack.prefect}/api/deployments/{stack.deployment_id}")
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deployment["schedules"]
            ] == [(QUIET_CRON, TIMEZONE)]


def test_deploy_schedules_the_nightly_on_stack_cron_in_stack_timezone(prefect_server, tmp_path,
                                                                      monkeypatch, capsys):
    """`shrinkflow deploy` to a real Prefect server: the schedule is the config's, as `up` serves
    it, and a deploy with another replaces it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    from flows.cli import main

    for folder in ("flows", "tasks", "infra"):
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # for `prefect deploy`
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="shrinkflow", type="process"), overwrite=True)
    schedules = []
    for cron, timezone in (("15 3 * * mon-fri", TIMEZONE), ("0 4 * * *", "UTC")):
        assert main(["deploy", "--set", f"stack.cron={cron}", "--set", f"stack.timezone={timezone}"]
                    ) == 0, capsys.readouterr()
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("compress/nightly")
        schedules.append([(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules])
    assert schedules == [[("15 3 * * mon-fri", TIMEZONE)], [("0 4 * * *", "UTC")]]


def test_a_run_from_the_ui_is_tracked_in_mlflow_with_its_override(stack, first_run):
    run = mlflow_parent_run(stack, first_run["id"])
    assert run["info"]["status"] == "FINISHED"
    params, metrics, tags = (as_dict(run["data"][key]) for key in ("params", "metrics", "tags"))
    assert params["distill.temperature"] == "3.0"  # the override, exactly like --set
    assert {"compression_ratio", "speedup", "accuracy_drop_pt", "final.accuracy"} <= metrics.keys()
    assert tags["prefect.flow_run_url"].startswith(stack.prefect)
    assert tags["dvc.experiment"] == first_run["name"]
    children = mlflow_api(stack, "runs/search", {
        "experiment_ids": [run["info"]["experiment_id"]],
        "filter": f"tags.mlflow.parentRunId = '{run['info']['run_id']}'",
    })["runs"]
    assert sorted(c["info"]["run_name"] for c in children) == sorted(STAGES)
    assert "temperature: 3.0" in (stack.root / "params.yaml").read_text()


def test_the_cli_runs_its_flow_on_the_stack_and_logs_through_its_mlflow_server(stack, first_run):
    """`shrinkflow run` beside `up`: a flow run of the stack's Prefect (no temporary server), its
    MLflow run created through the stack's MLflow server (its access log), not in the sqlite file
    behind the server's back. The project is as the first run left it: a repeat of that run."""
    creations = lambda: (stack.root / "up.log").read_text().count("POST /api/2.0/mlflow/runs/create")
    before = creations()
    done = subprocess.run([SHRINKFLOW, "run"], cwd=stack.root, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "temporary server" not in done.stderr
    assert "all stages up to date: nothing re-ran" in done.stdout
    assert f"        all runs {stack.mlflow}/#/experiments/" in done.stdout
    experiment = mlflow_api(stack, "experiments/get-by-name", experiment_name="test")["experiment"]
    (run,) = mlflow_api(stack, "runs/search", {
        "experiment_ids": [experiment["experiment_id"]], "max_results": 1,
        "filter": "tags.pipeline = 'compress'", "order_by": ["attributes.start_time DESC"],
    })["runs"]
    tags = as_dict(run["data"]["tags"])
    assert run["info"]["run_id"] in done.stdout and run["info"]["status"] == "FINISHED"
    assert (f"MLflow: this run {stack.mlflow}/#/experiments/{experiment['experiment_id']}/runs/"
            f"{run['info']['run_id']}?workflowType=machine_learning") in done.stdout
    flow_run = get_json(f"{stack.prefect}/api/flow_runs/{tags['prefect.flow_run_id']}")
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["deployment_id"] is None
    assert tags["prefect.flow_run_url"].startswith(stack.prefect)
    assert creations() - before == 1  # a repeat of the first run: no stage ran
    assert tags["shrinkflow.unchanged_since"] == mlflow_parent_run(stack, first_run["id"])[
        "info"]["run_id"]


def test_the_run_publishes_its_report_table_progress_and_mlflow_link(stack, first_run):
    artifacts = get_json(f"{stack.prefect}/api/artifacts/filter",
                         {"artifacts": {"flow_run_id": {"any_": [first_run["id"]]}}})
    progress = [a for a in artifacts if a["type"] == "progress"]
    assert len(progress) == 1 and progress[0]["data"] == 100.0
    assert progress[0]["description"] == "done"  # not the last stage's name
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert by_key["compress-candidates"]["type"] == "table"
    final = {row["candidate"]: row for row in json.loads(by_key["compress-candidates"]["data"])}[
        "final"]  # in the report's units, not 0.9805555555555555
    assert re.fullmatch(r"\d+\.\d\d %", final["accuracy"]) and final["gzip size"].endswith(" KiB")
    report = by_key["compress-report"]["data"]
    assert "promoted to `champion`" in report and "```" not in report  # markdown, not a code block
    assert "| accuracy |" in report and "- vs the teacher: drop " in report
    assert re.search(r"- vs the teacher: latency .* us: [\d.]+x (faster|SLOWER) \(between ", report)
    assert f"]({stack.mlflow}/#/experiments/" in report and "/artifactPath/plots/" in report
    links = [line for line in report.splitlines() if "/#/experiments/" in line]
    assert links and all("?workflowType=machine_learning" in link for link in links)
    for key in ("mlflow-run", "mlflow-runs"):  # markdown links to the training-runs view
        assert f"({stack.mlflow}/#/experiments/" in by_key[key]["data"]
        assert "?workflowType=machine_learning" in by_key[key]["data"]
    assert by_key["model-card"]["data"].startswith("# Model card: ")


def test_champion_moves_only_for_a_better_model_and_loads_in_a_fresh_process(stack, first_run):
    assert mlflow_api(stack, "registered-models/alias", name=MODEL, alias="champion")[
        "model_version"]["version"] == "1"
    second = wait_for(stack, trigger(stack, latency_runs=250))  # measured again, same model
    assert second["state"]["type"] == "COMPLETED"
    assert mlflow_api(stack, "registered-models/alias", name=MODEL, alias="champion")[
        "model_version"]["version"] == "1"
    version_2 = mlflow_api(stack, "model-versions/get", name=MODEL, version="2")["model_version"]
    assert as_dict(version_2["tags"])["verdict"] == "not promoted"
    assert "does not beat the champion: gzip " in version_2["description"]

    data = Dataset.load(stack.root / "artifacts" / "splits.json")
    np.save(stack.root / "x_test.npy", data.test.read())
    script = ("import mlflow, numpy as np, sys; "
              f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion'); "
              "np.save(sys.argv[2], m.predict(np.load(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", script, "x_test.npy", "served.npy"], cwd=stack.root,
                   env=os.environ | {"MLFLOW_TRACKING_URI": stack.mlflow}, check=True, timeout=300)
    expected = TFLiteClassifier((stack.root / "artifacts" / "model.tflite").read_bytes()).predict(data.test.read())
    np.testing.assert_array_equal(np.load(stack.root / "served.npy"), expected)


def test_a_night_in_which_nothing_changed_is_recorded_as_a_repeat(stack, first_run):
    """The same form twice: the second run, like a night with nothing new, measures, gates and
    registers nothing; its MLflow run names the run that made the model, its report says so."""
    made = wait_for(stack, trigger(stack, latency_runs=260))
    versions = model_versions(stack)
    repeat = wait_for(stack, trigger(stack, latency_runs=260))
    assert repeat["state"]["type"] == "COMPLETED"
    assert model_versions(stack) == versions
    tags = as_dict(mlflow_parent_run(stack, repeat["id"])["data"]["tags"])
    made_by = mlflow_parent_run(stack, made["id"])["info"]["run_id"]
    assert tags["shrinkflow.unchanged_since"] == made_by and "gate.decision" in tags
    assert tags["mlflow.runName"] == f"repeat of {made['name']}"  # apart from real runs at a glance
    headline, repeated = tags["mlflow.note.content"].split("\n\n")
    assert "x smaller (gzip), " in headline  # the made run's, first: the runs table shows it
    assert repeated.startswith(f"repeat of {made['name']}: nothing changed since MLflow run ")
    artifacts = get_json(f"{stack.prefect}/api/artifacts/filter",
                         {"artifacts": {"flow_run_id": {"any_": [repeat["id"]]}}})
    (report,) = [a["data"] for a in artifacts if a["key"] == "compress-report"]
    assert f"Nothing changed since MLflow run `{made_by}`" in report


def model_versions(stack: Stack) -> list[str]:
    found = mlflow_api(stack, "model-versions/search", filter=f"name='{MODEL}'")
    return sorted(v["version"] for v in found.get("model_versions", []))


def test_a_new_champion_and_a_failed_run_each_send_one_message(stack, first_run, webhook):
    (promoted,) = webhook.about(first_run["name"])
    assert "promoted a new champion" in promoted["subject"]
    assert f"{MODEL} version 1 is the new champion: first model" in promoted["text"]
    assert f"MLflow run: {stack.mlflow}/#/experiments/" in promoted["text"]
    assert "?workflowType=machine_learning" in promoted["text"]  # the training runs, not GenAI

    failed_run = wait_for(stack, trigger(stack, data_source="npz:/nowhere/nightly.npz"))
    assert failed_run["state"]["type"] == "FAILED"
    (failed,) = webhook.about(failed_run["name"])
    assert f"shrinkflow run {failed_run['name']} failed" == failed["subject"]
    assert "InputError: data.source: /nowhere/nightly.npz does not exist" in failed["text"]
    mlflow_run = mlflow_parent_run(stack, failed_run["id"])
    assert mlflow_run["info"]["status"] == "FAILED"
    assert f"/runs/{mlflow_run['info']['run_id']}" in failed["text"]


def test_data_replaced_in_place_is_picked_up_by_the_next_deployment_run(stack, first_run):
    data = stack.root / "nightly.npz"
    old = hashlib.md5(data.read_bytes()).hexdigest()
    digits_npz(data, start=400)  # the job that feeds the nightly run wrote new data
    new = hashlib.md5(data.read_bytes()).hexdigest()
    run = wait_for(stack, trigger(stack))  # the same form as the first run: only the data changed
    assert run["state"]["type"] == "COMPLETED"
    parent = mlflow_parent_run(stack, run["id"])
    tags = as_dict(parent["data"]["tags"])
    headline, changed = tags["mlflow.note.content"].split("\n\n")
    assert changed == f"data.source changed: md5 {old[:8]}… → {new[:8]}…"
    assert "x smaller (gzip), " in headline and "x faster, accuracy drop " in headline
    assert tags["input.data.source.md5"] == new
    children = mlflow_api(stack, "runs/search", {
        "experiment_ids": [parent["info"]["experiment_id"]],
        "filter": f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'",
    })["runs"]
    assert {c["info"]["run_name"]: as_dict(c["data"]["tags"])["skipped"] for c in children} == \
        dict.fromkeys(STAGES, "false")


def test_an_invalid_parameter_is_refused_by_the_server(stack):
    deployment = get_json(f"{stack.prefect}/api/deployments/{stack.deployment_id}")
    params = deployment["parameters"]["params"]
    params["distill"]["temperature"] = -1.0
    with pytest.raises(urllib.error.HTTPError) as refused:
        create_flow_run(stack, params)
    assert refused.value.code == 409
    assert "'params.distill.temperature'" in refused.value.read().decode()


def test_the_ui_shows_the_run_form_and_the_published_mlflow_links(stack, first_run):
    """One page load each: the Prefect run form, as a new browser gets it from the URL `up`
    prints (Prefect's V2 UI), speaks params.yaml and refuses -1 as the server does; the
    published MLflow links (the run's report artifacts) open the training runs with their
    headline (the Description, verdict first, then the metrics' columns, as the headline reads
    them, and the recipe's) and the run itself, not MLflow 3's GenAI overview; the model version's
    page shows the headline and the model card. MLflow's runs table renders only the columns in
    sight: its shared view (flows/record/tracking.py `VIEW_STATE`) puts the headline's first."""
    from playwright.sync_api import expect, sync_playwright

    artifacts = get_json(f"{stack.prefect}/api/artifacts/filter",
                         {"artifacts": {"flow_run_id": {"any_": [first_run["id"]]}}})
    published = {a["key"]: a["data"].split("](")[1].removesuffix(")") for a in artifacts
                 if a["key"] in ("mlflow-run", "mlflow-runs")}  # `[text](url)`
    run = mlflow_parent_run(stack, first_run["id"])["data"]
    metrics, params = as_dict(run["metrics"]), as_dict(run["params"])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        run_form(page, stack)

        page.goto(published["mlflow-runs"])  # a new browser: MLflow 3 would open on GenAI
        headline = re.compile(r"^(promoted|not promoted).*: [\d.]+x smaller \(gzip\)")
        expect(page.get_by_role("gridcell", name=headline).first).to_be_visible(timeout=60_000)
        if (assistant := page.locator(ASSISTANT_CLOSE)).count():  # opens itself in a new browser
            assistant.click()
        expect(page.get_by_role("gridcell", name=first_run["name"]).first).to_be_visible()
        for metric in ("compression_ratio", "speedup", "accuracy_drop_pt"):  # header, then value
            expect(page.get_by_role("columnheader", name=metric, exact=True).first).to_be_visible()
            expect(page.get_by_role("gridcell", name=shown(metrics[metric]), exact=True).first
                   ).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-runs.png"), full_page=True)
        page.set_viewport_size({"width": 2200, "height": 1000})  # the recipe's columns in sight
        for key in ("distill.width", "sparsify.final_sparsity", "quantize.mode",
                    "distill.temperature"):
            expect(page.get_by_role("columnheader", name=key, exact=True).first).to_be_visible()
        expect(page.get_by_role("gridcell", name=params["distill.temperature"], exact=True).first
               ).to_be_visible()  # 3.0: the run's form override
        page.screenshot(path=str(SCREENSHOTS / "mlflow-runs-recipe.png"))
        page.set_viewport_size({"width": 1400, "height": 1000})

        page.goto(published["mlflow-run"])
        expect(page.get_by_text(headline).first).to_be_visible(timeout=60_000)  # its description
        expect(page.get_by_text("compression_ratio", exact=True).first).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-run.png"), full_page=True)

        page.goto(f"{stack.mlflow}/#/models/{MODEL}/versions/1")
        expect(page.get_by_text(f"Model card: {MODEL}").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(headline).first).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-model-version.png"), full_page=True)

        page.goto(f"{stack.mlflow}/#/models/{MODEL}")  # the versions table: a plain first line
        version = page.get_by_role("row", name=re.compile(  # the tags' keys, then the text
            r"^Version 1 .* verdict certified .* (promoted|not promoted)[^*]*: [\d.]+x"))
        expect(version).to_be_visible(timeout=60_000)
        assert "**" not in version.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-model-versions.png"), full_page=True)
        browser.close()


def shown(value: float) -> str:
    """A metric as MLflow's UI writes it (JavaScript's numbers: 37.0 is `37`)."""
    return str(value).removesuffix(".0")


def run_form(page, stack: Stack) -> None:
    """The run form in Prefect's V2 UI (where `/` leads a new browser): sections titled by their
    key, switches by what they switch, no `(Optional)` in params, no class names, no backticks;
    -1 typed as a temperature is refused by the browser (the form's `minimum`), no run is made."""
    from playwright.sync_api import expect

    page.goto(f"{stack.prefect}/v2/deployments/deployment/{stack.deployment_id}/run")
    temperature = page.get_by_label("temperature", exact=True)
    temperature.wait_for(timeout=60_000)
    text = page.inner_text("body")
    # the flow's own two settings beside params, each with a default: optional indeed
    assert re.findall(r"(\S+) \(Optional\)", text) == ["workdir", "repeat_unchanged"]
    assert "`" not in text and not re.search(r"[a-z]Config\b", text)
    for title in ("model", "data", "gate", "search enabled", "distill enabled", "learning rate"):
        expect(page.get_by_text(title, exact=True).first).to_be_attached()
    assert text.index("search enabled") < text.index("distill enabled")  # the common keys first
    page.screenshot(path=str(SCREENSHOTS / "prefect-run-form.png"), full_page=True)
    runs = len(get_json(f"{stack.prefect}/api/flow_runs/filter", {}))
    temperature.fill("-1")
    assert temperature.evaluate("field => field.validity.rangeUnderflow")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_timeout(2000)
    assert len(get_json(f"{stack.prefect}/api/flow_runs/filter", {})) == runs
    temperature.screenshot(path=str(SCREENSHOTS / "prefect-run-form-refused.png"))


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    from flows.stack.config import Config, StackConfig
    from flows.stack.servers import up
    from tasks.config import Params
    from tasks.errors import InputError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=rf"stack.mlflow_port: 127.0.0.1:{port} is in use"):
            up(Config(Params(), StackConfig(prefect_port=free_port(), mlflow_port=port), ()),
               tmp_path)
    assert not (tmp_path / ".shrinkflow").exists()
