"""MLflow: one parent run per pipeline run, a nested run per stage, the config as params, the
data splits as datasets."""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.types.schema import Schema, TensorSpec

from flows.workspace.params import dump_params, flatten
from flows.workspace.versioning import Fingerprint, git_commit, output_md5s, recorded_inputs
from tasks.artifacts import Workspace
from tasks.config import Params, TrackingConfig
from tasks.inputs import load_inputs
from tasks.splits import Dataset

if TYPE_CHECKING:
    from tasks.model_files import ModelSource

SQLITE = "sqlite:///"
SPLITS = {"train": "train", "val": "validation", "test": "test"}  # Dataset field -> MLflow context
POOL_PARTS = {"choose": "unlabeled_choose", "certify": "unlabeled_certify"}  # Pool field -> context
# The MLflow server of `shrinkflow up` in front of the sqlite store: set for the stack's own
# processes, and by `shrinkflow run` while the stack runs. Runs log through it.
MLFLOW_UI_ENV = "SHRINKFLOW_MLFLOW_UI"
# Who runs a pipeline run: what tells a run left RUNNING by a killed process from a live one.
HOST_TAG, PID_TAG, WORKSPACE_TAG = "shrinkflow.host", "shrinkflow.pid", "shrinkflow.workspace"
KILLED_TAG = "shrinkflow.killed"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
MD5_TAG = "dvc.md5."  # + an output's path: the md5 dvc.lock held for it
VERSION_TAG = "registry.version"  # the model version a run registered
CHAMPION = "champion"  # the registry alias of the deployable model
NO_CHAMPION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model / alias
ERROR_TAG_LIMIT = 5000  # MLflow tag values are capped; the full traceback goes in error.txt
# MLflow 3's UI opens an experiment on its GenAI overview (traces, tokens); this URL parameter of
# its hash route opens the training runs instead (the experiment tag below did not, in a browser).
TRAINING_VIEW = "workflowType=machine_learning"
KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
# A view of the runs table stored on the experiment, as the UI's "Share" button stores one: the
# link `mlflow_url` gives to the runs opens it (a banner says it is a shared view). The table
# renders only the columns in sight (off-screen ones are not in the page), so the headline comes
# first, in widths that fit a 1280-pixel screen (the Description cell shows 50 characters), then
# the recipe's keys people change, as the run's params hold them (the search's choice aside).
VIEW_KEY = "shrinkflow"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
RECIPE_COLUMNS = {"distill.width": 110, "sparsify.final_sparsity": 170, "quantize.mode": 120,
                  "distill.temperature": 150}
HEADLINE_COLUMNS = {"attributes.`Description`": 300, "metrics.`compression_ratio`": 125,
                    "metrics.`speedup`": 75, "metrics.`accuracy_drop_pt`": 125,
                    **{f"params.`{key}`": width for key, width in RECIPE_COLUMNS.items()}}  # pixels
VIEW_STATE = {"selectedColumns": list(HEADLINE_COLUMNS), "columnWidths": HEADLINE_COLUMNS,
              "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *HEADLINE_COLUMNS]}
EXPERIMENT_TAGS = {KIND_TAG: MODEL_DEVELOPMENT, VIEW_TAG: json.dumps(VIEW_STATE)}


@contextmanager
def pipeline_run(params: Params, run_name: str | None, tags: dict[str, str]) -> Iterator[Run]:
    """The parent run: params logged up front; on failure the error is recorded (see `_run` for
    the status)."""
    use_experiment(params.tracking)
    with _run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(flatten(params.model_dump(mode="json")))
        mlflow.log_text(dump_params(params), "params.yaml")
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:ERROR_TAG_LIMIT])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise


@contextmanager
def _run(**start_run) -> Iterator[Run]:
    """`mlflow.start_run`, ended FAILED by an error and KILLED by what stops the process instead
    (SIGTERM as Prefect's TerminationSignal, Ctrl-C, SystemExit): MLflow's own says FAILED."""
    with mlflow.start_run(**start_run) as run:
        try:
            yield run
        except Exception:
            raise
        except BaseException:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise


def process_tags(root: Path) -> dict[str, str]:
    """This process and its workspace, for `close_killed_runs` to find the run if it is killed."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            WORKSPACE_TAG: str(root.resolve())}


def close_killed_runs(cfg: TrackingConfig, root: Path) -> list[Run]:
    """Mark KILLED, with a note, the parent runs of the workspace `root` (and their stage runs)
    still RUNNING though their process on this host is gone: killed (SIGKILL, out of memory)
    before MLflow could end them. Returns the parent runs closed.

    Call with the workspace lock held: a live run of this workspace would hold it.
    """
    use_experiment(cfg)
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(cfg.experiment).experiment_id
    host = socket.gethostname()
    running = "attributes.status = 'RUNNING'"
    orphans = [run for run in client.search_runs(
        [experiment], f"{running} and tags.`{HOST_TAG}` = '{host}' and "
                      f"tags.`{WORKSPACE_TAG}` = '{root.resolve()}'")
        if not _alive(int(run.data.tags[PID_TAG]))]
    noticed = datetime.now(UTC).isoformat(timespec="seconds")
    for run in orphans:
        _end_killed(client, run, f"killed: process {run.data.tags[PID_TAG]} on {host} ended "
                                 f"without closing this run; noticed by process {os.getpid()} "
                                 f"at {noticed}")
    return [client.get_run(run.info.run_id) for run in orphans]


def end_killed(tracking: str, run_id: str, note: str) -> None:
    """End the parent run `run_id` of this process, if still running, and its stage runs, KILLED
    with `note`, from any thread (a run stopped hard: flows/signals.py)."""
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":  # else ended already, as the stop unwound
        _end_killed(client, run, note)


def _end_killed(client: mlflow.MlflowClient, run: Run, note: str) -> None:
    stages = client.search_runs([run.info.experiment_id], "attributes.status = 'RUNNING' and "
                                f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    for closed in (*stages, run):
        earlier = closed.data.tags.get(NOTE_TAG)
        client.set_tag(closed.info.run_id, KILLED_TAG, note)
        client.set_tag(closed.info.run_id, NOTE_TAG, f"{earlier}\n\n{note}" if earlier else note)
        client.set_terminated(closed.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def mlflow_url(tracking: TrackingConfig, experiment_id: str, run_id: str | None = None,
               artifact: str | None = None) -> str | None:
    """A page of the MLflow UI, when there is a UI to link to: the experiment's training runs
    (the headline's columns, `VIEW_STATE`), or the run `run_id`, or its `artifact` (a path in the
    run's artifacts). Every MLflow link shrinkflow prints or publishes is made here."""
    base = tracking.uri if tracking.uri.startswith("http") else os.environ.get(MLFLOW_UI_ENV)
    if not base:
        return None
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
    if run_id is None:
        return f"{page}?{TRAINING_VIEW}&viewStateShareKey={VIEW_KEY}"
    page += f"/{run_id}" + (f"/artifactPath/{artifact}" if artifact else "")
    return f"{page}?{TRAINING_VIEW}"


def champion_version(model_name: str) -> str | None:
    """The version holding the `champion` alias of `model_name`; None if there is none."""
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in NO_CHAMPION:
            return None
        raise  # the registry is unreachable: not a reason to crown (or keep) a model


def use_experiment(cfg: TrackingConfig) -> None:
    """Point MLflow at the configured store and experiment, creating it if needed, typed as model
    development with the runs table's view of the headline (`EXPERIMENT_TAGS`).

    With a local sqlite store the artifacts go to `mlartifacts/` beside the database file
    (MLflow's default would be `./mlruns`, easily mistaken for the refused file store).
    """
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if cfg.uri.startswith(SQLITE) and mlflow.get_experiment_by_name(cfg.experiment) is None:
        mlflow.create_experiment(cfg.experiment, artifact_root(cfg.uri), tags=EXPERIMENT_TAGS)
    experiment = mlflow.set_experiment(cfg.experiment)
    for key, value in EXPERIMENT_TAGS.items():  # experiments made before, or by someone else
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


def tracking_uri(cfg: TrackingConfig) -> str:
    """Where runs log: `cfg.uri`, or the stack's MLflow server when it serves that sqlite store,
    so that only the server writes the file (two writers of one sqlite file lock each other out)."""
    served = os.environ.get(MLFLOW_UI_ENV)
    return served if served and cfg.uri.startswith(SQLITE) else cfg.uri


def artifact_root(sqlite_uri: str) -> str:
    """`mlartifacts/` beside the sqlite database file, as a file URI."""
    database = Path(sqlite_uri.removeprefix(SQLITE)).resolve()
    return (database.parent / "mlartifacts").as_uri()


@contextmanager
def stage_run(name: str) -> Iterator[Run]:
    with _run(run_name=name, nested=True) as run:
        yield run


def log_stage(metrics: dict[str, float], skipped: bool = False) -> None:
    """A stage's metrics; a skipped stage is tagged as such (its outputs are the recorded ones)."""
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.set_tag("skipped", str(skipped).lower())


def log_run(params: Params, root: Path, experiment: str, remote: str | None,
            changes: list[str], metrics: dict[str, float]) -> None:
    """The run's record in the active MLflow run: its inputs and what changed, the data splits
    and the teacher, where DVC keeps it all, and the outputs a reviewer opens with `metrics`."""
    ws = Workspace(root)
    log_inputs(recorded_inputs(root, params), changes)
    log_data_and_teacher(params, ws)
    tag_versions(root, experiment, remote)
    log_outputs(ws, metrics)


def tag_versions(root: Path, experiment: str, remote: str | None) -> None:
    """What finds the artifacts again: git commit, DVC experiment, each output's md5, the remote."""
    mlflow.set_tags({
        "mlflow.source.git.commit": git_commit(root),
        "dvc.experiment": experiment,
        "dvc.remote": remote or "",
        **{f"{MD5_TAG}{path}": md5 for path, md5 in output_md5s(root).items()},
    })


def log_inputs(inputs: dict[str, Fingerprint], changes: list[str]) -> None:
    """Each user input's path and DVC digest as tags; what changed since the last run as the
    run's description (the first thing the MLflow UI shows)."""
    mlflow.set_tags({f"input.{key}.{field}": value for key, found in inputs.items()
                     for field, value in (("path", found.path), ("md5", found.md5))})
    mlflow.set_tag(NOTE_TAG, "\n".join(changes) or "inputs unchanged since the last run")


def describe_run(headline: str, changes: list[str]) -> None:
    """The active run's description (`NOTE_TAG`, the run page's Description and the runs table's
    column): the one-line headline first, then what changed in the inputs."""
    mlflow.set_tag(NOTE_TAG, "\n\n".join([headline, *changes]))


def log_outputs(ws: Workspace, metrics: dict[str, float]) -> None:
    """Headline metrics and the artifacts a reviewer opens: model, metrics, the candidates'
    predictions on the test split, quantization sensitivity, plots."""
    mlflow.log_metrics(metrics)
    for path in (ws.model, ws.metrics, ws.predictions, ws.sparsity, ws.quant_sensitivity):
        mlflow.log_artifact(str(path))
    for plot in sorted(ws.plots.glob("*.png")):
        mlflow.log_artifact(str(plot), artifact_path="plots")


def log_data_and_teacher(params: Params, ws: Workspace) -> None:
    """The splits the run used (artifacts/splits.json) as MLflow datasets, and how a teacher file
    was read, so that runs on other data or another teacher show it."""
    inputs = load_inputs(params.data, params.model)
    data = Dataset.load(ws.data)
    log_datasets(data, params.data.source, inputs["data.source"])
    if data.pool:
        log_pool(data, inputs["data.unlabeled"])
    if inputs["model.source"] is not None:  # a file, not built here
        from tasks.model_files import model_source  # tf_keras: imported for a teacher file only

        mlflow.set_tags(teacher_tags(model_source(inputs["model.source"])))


def log_datasets(data: Dataset, source: str, path: Path | None) -> None:
    """Each split as a dataset input of the active run, with context train / validation / test:
    its schema and digest, not its data (a MetaDataset: the data may not fit in memory).

    The digest is the load stage's MD5 of every value (tasks/splits.py): MLflow's own numpy digest
    hashes only the first 10,000 values, so two image sets differing after the first few images
    would look the same.
    """
    origin: DatasetSource = (LocalArtifactDatasetSource(str(path.resolve())) if path
                             else CodeDatasetSource({"data.source": source}))
    name = path.name if path else source
    schema = Schema([_features(data), TensorSpec(np.dtype(np.int64), (-1,), "targets")])
    for split, context in SPLITS.items():
        logged = MetaDataset(origin, name=name, digest=data.splits[split].digest, schema=schema)
        mlflow.log_input(logged, context=context)


def log_pool(data: Dataset, path: Path) -> None:
    """The unlabeled pool's two parts as datasets of the active run, as the splits are (schema
    and digest; inputs only), with context unlabeled_choose / unlabeled_certify."""
    origin = LocalArtifactDatasetSource(str(path.resolve()))
    for part, context in POOL_PARTS.items():
        logged = MetaDataset(origin, name=path.name, digest=data.pool.parts[part].digest,
                             schema=Schema([_features(data)]))
        mlflow.log_input(logged, context=context)


def _features(data: Dataset) -> TensorSpec:
    return TensorSpec(np.dtype(np.float32), (-1, *data.input_shape), "features")


def teacher_tags(source: ModelSource) -> dict[str, str]:
    """The teacher file's format, the Keras that wrote it and whether it was rebuilt in tf_keras."""
    return {
        "teacher.format": source.format,
        "teacher.keras_version": source.keras_version or "unknown (a SavedModel does not say)",
        "teacher.converted": str(source.converted).lower(),
    }
