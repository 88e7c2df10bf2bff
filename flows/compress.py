"""The `compress` flow: load -> search -> sparsify -> distill -> quantize -> evaluate -> gate.

Prefect orchestrates, DVC decides which stages are up to date and records every run as an
experiment, MLflow tracks one parent run with a nested run per stage and holds the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.record.gated import Gated
from flows.record.killed import close_killed, crash_flow_run
from flows.record.model_card import model_card
from flows.record.publish import Announcer, Progress, publish_repeat, publish_results
from flows.record.registry import register_and_gate
from flows.record.report import input_changes
from flows.record.tracking import (
    describe_run,
    end_killed,
    log_run,
    log_stage,
    mlflow_url,
    pipeline_run,
    process_tags,
    stage_run,
    tracking_uri,
)
from flows.record.unchanged import FlowRunRecord, last_run_if_unchanged, record_unchanged
from flows.retry import RETRY_POLICY
from flows.signals import HARD_STOP_NOTE, on_hard_stop, stop_kept
from flows.stages import STAGES, check_changed_inputs, stage_call
from flows.workspace.versioning import (
    Fingerprint,
    forget_stage,
    is_up_to_date,
    open_repo,
    record_experiment,
    record_stage,
    recorded_inputs,
    workspace_lock,
    write_params_file,
)
from tasks.artifacts import Workspace
from tasks.choice import chosen_params, search_refusal, search_summary
from tasks.config import Params
from tasks.errors import InputChanged
from tasks.gate import announce_rule, rule_for, weigh
from tasks.inputs import read_steadily, stage_inputs
from tasks.measurements import RunMetrics
from tasks.splits import Dataset

if TYPE_CHECKING:
    from mlflow.entities import Run


@flow(name="compress", log_prints=True)
def compress(params: Params, workdir: str = ".", repeat_unchanged: bool = False) -> dict:
    """Compress the configured teacher into an INT8 TFLite model and gate it into the registry.

    Inputs are checked first (no training, nothing written). Stages whose inputs (the user's files
    by content), code and params are unchanged since DVC last recorded them are skipped. Returns
    the metrics, what each stage did, what changed in the inputs, the gate decision, and the names
    under which DVC and MLflow recorded the run. A failure, and a new champion, emit Prefect events.

    Args:
        params: The pipeline configuration, as in params.yaml: one section per stage.
        workdir: The project directory holding dvc.yaml, params.yaml and the artifacts.
        repeat_unchanged: When nothing changed since the last run (same params, inputs, outputs
            and champion), record a repeat of it instead of gating and registering the same
            model again. On for the nightly deployment.
    """
    from tasks.friendly import student_changes  # TensorFlow: not at import

    get_run_logger().info("params: %s", params)
    root = Path(workdir)
    name = flow_run.get_name() or "shrinkflow"
    announcer = Announcer(name, str(flow_run.get_id() or ""))
    with announcer.failures(), on_hard_stop(partial(crash_flow_run, announcer.flow_run_id,
                                                    HARD_STOP_NOTE)):
        tags = run_tags(root, announcer)
        with locked_workspace(params, root):
            if repeat_unchanged and (last := last_run_if_unchanged(params, root)):
                return repeated(params, root, last, announcer)
            with pipeline_run(params, name, tags) as run, on_hard_stop(partial(
                    end_killed, tracking_uri(params.tracking), run.info.run_id, HARD_STOP_NOTE)):
                announcer.mlflow_url = mlflow_url(params.tracking, run.info.experiment_id,
                                                  run.info.run_id)
                progress = Progress(STAGES)
                stages, before = run_stages(params, root, progress)
                progress.finish("recording the run: DVC, MLflow, the registry's gate")
                ws = Workspace(root)
                student = student_changes(chosen_params(params, ws).distill, ws.teacher,
                                          ws.student)
                metrics, changes, gated = record_run(params, root, name, before, student)
        runs_url = mlflow_url(params.tracking, run.info.experiment_id)
        publish_results(params, ws, metrics, gated, run, runs_url)
        progress.finish()
    if gated.decision.promote:
        announcer.promoted(params.gate.registered_model, gated.version, gated.decision.reason,
                           gated.certified)
    return {
        "metrics": metrics.to_json(),
        "stages": stages,
        "inputs_changed": changes,
        "experiment": name,
        "mlflow_run_id": run.info.run_id,
        "mlflow_url": announcer.mlflow_url,
        "mlflow_runs_url": runs_url,
        "model_version": gated.version,
        "promoted": gated.decision.promote,
        "certified": gated.certified,
        "gate": gated.decision.reason,
        "search": search_summary(ws),
        "student": student,
    }


def repeated(params: Params, root: Path, last: Run, announcer: Announcer) -> dict:
    """This flow run recorded as a repeat of `last` (nothing to run, gate or register); its
    report in the Prefect UI says so."""
    run = FlowRunRecord(announcer.flow_run_id, announcer.run_name, flow_run.ui_url or "")
    report = record_unchanged(params, root, last, run if run.id else None)
    get_run_logger().info("nothing changed since MLflow run %s: recorded as a repeat",
                          report["unchanged_since"])
    publish_repeat(report)
    return report


@contextmanager
def locked_workspace(params: Params, root: Path) -> Iterator[None]:
    """The DVC project at `root`, for this run alone; runs a killed process left open closed."""
    open_repo(root).close()
    with workspace_lock(root, on_wait=get_run_logger().warning):
        close_killed(params.tracking, root)
        yield


def run_tags(root: Path, announcer: Announcer) -> dict[str, str]:
    """The MLflow run's tags that lead back to the Prefect flow run and to this process."""
    return {"prefect.flow_run_id": announcer.flow_run_id,
            "prefect.flow_run_url": flow_run.ui_url or "", "pipeline": "compress",
            **process_tags(root)}


def run_stages(params: Params, root: Path,
               progress: Progress) -> tuple[dict[str, str], dict[str, Fingerprint]]:
    """Each stage run or skipped, in order, with params.yaml holding `params` for DVC, on the
    `progress` bar. Returns what each did and the input fingerprints dvc.lock held before."""
    changed = check_changed_inputs(params, root)
    before = recorded_inputs(root, params)
    write_params_file(root, params)
    stages = {}
    for stage in STAGES:
        with progress.stage(stage):
            stages[stage] = run_or_skip(stage, params, root, changed)
        if stage == "load":  # the test split and the teacher's errors on it are known from here
            announce_rule(rule_for(params.gate, Dataset.load(Workspace(root).data)), params.gate)
    return stages, before


@task(name="stage", task_run_name="{stage}", **RETRY_POLICY)
def run_or_skip(stage: str, params: Params, root: Path, changed: bool = True) -> str:
    """Run `stage` and record it in DVC, or skip it when DVC says it is up to date (`changed`
    False: DVC said so of every stage before the run, with the workspace locked since).

    The user files the stage reads must not change from before it reads them until DVC has
    hashed them: otherwise dvc.lock would vouch for outputs made from other content. Such a
    change forgets the stage in dvc.lock and raises `InputChanged`, which Prefect retries.
    """
    with stage_run(stage), stop_kept():
        if not changed or is_up_to_date(root, stage):
            get_run_logger().info("%s: up to date, skipped", stage)
            log_stage({}, skipped=True)
            return "skipped"
        compute, kwargs = stage_call(stage, params, Workspace(root))
        try:
            with read_steadily(stage_inputs(params).get(stage, {})):
                log_stage(compute(**kwargs))
                record_stage(root, stage)
        except InputChanged:
            forget_stage(root, stage)
            raise
        return "ran"


@task(name="record", **RETRY_POLICY)
def record_run(params: Params, root: Path, name: str, before: dict[str, Fingerprint],
               student: str | None) -> tuple[RunMetrics, list[str], Gated]:
    """The run as a DVC experiment (pushed if a remote is set) and in MLflow, the model registered
    and gated (`student`: what the derived student changed, for the model card). Returns the
    metrics, what changed in the inputs since `before`, the gate's result."""
    get_run_logger().info("recording the run: DVC experiment %s, MLflow, the registry", name)
    ws = Workspace(root)
    metrics = RunMetrics.read(ws.metrics)
    changes = input_changes(before, recorded_inputs(root, params))
    remote = record_experiment(root, name)
    log_run(params, root, name, remote, changes, metrics.headline())
    gated = register_and_gate(params.gate, params.evaluate, ws,
                              weigh(params.gate, Dataset.load(ws.data), metrics),
                              model_card(params, ws, metrics, student), metrics.comparison,
                              search_refusal(ws))
    describe_run(gated.headline, changes)
    get_run_logger().info("gate: version %s %s: %s", gated.version,
                          "promoted to champion" if gated.decision.promote else "not promoted",
                          gated.decision.reason)
    return metrics, changes, gated
