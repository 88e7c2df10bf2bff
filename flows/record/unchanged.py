"""A run in which nothing changed, recorded in seconds instead of run again.

When params.yaml holds the run's params, DVC says every stage is up to date, and the last finished
run of this workspace logged the same params, recorded the same outputs and left the registry's
champion where it still is, a run would repeat that run: every stage skipped, the same model, the
same gate decision. `shrinkflow run` then records it without Prefect's temporary server,
TensorFlow, re-measuring or a new registry version: an MLflow run carrying the last run's metrics,
DVC experiment and gate decision, naming the run that made the model, and a Completed flow run on
the Prefect server of the environment's `PREFECT_API_URL` (the stack's, when it is up). The nightly
deployment's flow run (`compress(repeat_unchanged=True)`) records itself the same way.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run

from flows.record.tracking import (
    MD5_TAG,
    NOTE_TAG,
    VERSION_TAG,
    WORKSPACE_TAG,
    champion_version,
    mlflow_url,
    pipeline_run,
    process_tags,
    use_experiment,
)
from flows.workspace.params import flatten
from flows.workspace.versioning import StageStatus, git_commit, nothing_changed, output_md5s
from tasks.artifacts import Workspace
from tasks.choice import search_summary
from tasks.config import Params

MADE_BY_TAG = "shrinkflow.unchanged_since"  # on a repeat: the run that made its model
CARRIED_TAGS = ("dvc.", "input.", "teacher.", "gate.", "registry.", MADE_BY_TAG)
HTTP_TIMEOUT_S = 10


def last_run_if_unchanged(params: Params, root: Path,
                          status: StageStatus | None = None) -> Run | None:
    """The last finished pipeline run of the workspace `root` when a run with `params` would
    repeat it (see the module docstring); None when something must run or be gated again.
    `status`: DVC's, asked with the workspace locked (by default: now, if params.yaml holds
    `params`)."""
    if not nothing_changed(root, params, status):
        return None
    use_experiment(params.tracking)
    found = mlflow.search_runs(
        filter_string=f"tags.`{WORKSPACE_TAG}` = '{root.resolve()}' and tags.pipeline = 'compress'"
                      " and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not found:
        return None
    last, = found
    tags = last.data.tags
    if (VERSION_TAG not in tags
            or last.data.params != {key: str(value) for key, value in
                                    flatten(params.model_dump(mode="json")).items()}
            or {key.removeprefix(MD5_TAG): md5 for key, md5 in tags.items()
                if key.startswith(MD5_TAG)} != output_md5s(root)):
        return None
    champion_then = tags[VERSION_TAG] if tags["gate.promoted"] == "true" else tags.get(
        "gate.champion.version")
    return last if champion_version(params.gate.registered_model) == champion_then else None


def record_unchanged(params: Params, root: Path, last: Run,
                     flow_run: FlowRunRecord | None = None) -> dict:
    """Record a run that repeats `last`; return the report `run_summary` prints. `flow_run`: the
    flow run doing it (the nightly deployment's); else one is recorded Completed, if a Prefect
    server is set."""
    made_by = last.data.tags.get(MADE_BY_TAG, last.info.run_id)
    made_by_name = (last if made_by == last.info.run_id
                    else mlflow.MlflowClient().get_run(made_by)).info.run_name
    note = (f"nothing changed since MLflow run {made_by}: every stage up to date, the model "
            "not measured or registered again; its metrics and gate decision carried over")
    flow_run = flow_run or _completed_flow_run(note)
    tags = {key: value for key, value in last.data.tags.items() if key.startswith(CARRIED_TAGS)}
    headline = last.data.tags[NOTE_TAG].split("\n\n")[0]  # `describe_run`'s, the verdict first
    tags |= {MADE_BY_TAG: made_by, "pipeline": "compress",
             NOTE_TAG: f"{headline}\n\nrepeat of {made_by_name}: {note}",
             "mlflow.source.git.commit": git_commit(root), **process_tags(root)}
    if flow_run:
        tags |= {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_url": flow_run.url,
                 "prefect.flow_run_name": flow_run.name}
    # Named for the run that made the model: a repeat stands out among the real runs at a glance.
    with pipeline_run(params, f"repeat of {made_by_name}", tags) as run:
        mlflow.log_metrics(last.data.metrics)
    ws = Workspace(root)
    return {
        "metrics": json.loads(ws.metrics.read_text()),
        "stages": {},
        "inputs_changed": [],
        "experiment": tags["dvc.experiment"],
        "mlflow_run_id": run.info.run_id,
        "mlflow_url": mlflow_url(params.tracking, run.info.experiment_id, run.info.run_id),
        "mlflow_runs_url": mlflow_url(params.tracking, run.info.experiment_id),
        "unchanged_since": made_by,
        "model_version": tags[VERSION_TAG],
        "promoted": tags["gate.promoted"] == "true",
        "certified": tags.get("gate.certified", "true") == "true",
        "gate": tags["gate.decision"],
        "search": search_summary(ws),
    }


@dataclass(frozen=True)
class FlowRunRecord:
    id: str
    name: str
    url: str


def _completed_flow_run(message: str) -> FlowRunRecord | None:
    """A Completed `compress` flow run on the server at `PREFECT_API_URL`, if one is set: two
    REST calls (Prefect's client would cost seconds of imports). The server names the run."""
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        return None
    flow = _post(f"{api}/flows/", {"name": "compress"})
    run = _post(f"{api}/flow_runs/", {
        "flow_id": flow["id"], "tags": ["unchanged"],
        "state": {"type": "COMPLETED", "name": "Completed", "message": message}})
    return FlowRunRecord(run["id"], run["name"],
                         f"{api.removesuffix('/api')}/runs/flow-run/{run['id']}")


def _post(url: str, body: dict) -> dict:
    """POST JSON to Prefect's API with the environment's credentials (the server's auth string,
    or a Prefect Cloud key)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    auth, key = os.environ.get("PREFECT_API_AUTH_STRING"), os.environ.get("PREFECT_API_KEY")
    if auth:
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    elif key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.load(response)
