"""The `compress` flow: load -> sparsify -> distill -> quantize -> evaluate -> gate / register.

Prefect orchestrates, DVC decides which stages are up to date and records every run as an
experiment, MLflow tracks one parent run with a nested run per stage and holds the registry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.publish import Progress, publish_results
from flows.registry import register_and_gate
from flows.stages import STAGES, check_inputs, stage_call
from flows.tracking import (
    log_outputs,
    log_stage,
    mlflow_run_url,
    pipeline_run,
    stage_run,
    tag_versions,
)
from flows.versioning import (
    is_up_to_date,
    open_repo,
    push_if_configured,
    record_stage,
    save_experiment,
    workspace_lock,
    write_params_file,
)
from tasks.artifacts import Workspace
from tasks.config import Params
from tasks.evaluate import headline


@flow(name="compress", log_prints=True)
def compress(params: Params = Params(), workdir: str = ".") -> dict:
    """Compress the configured teacher into an INT8 TFLite model and gate it into the registry.

    Inputs are checked first (no training, nothing written). Stages whose inputs, code and params
    are unchanged since DVC last recorded them are skipped. Returns the metrics, what each stage
    did, the gate decision, and the names under which DVC and MLflow recorded the run.

    Args:
        params: The pipeline configuration, as in params.yaml: one section per stage.
        workdir: The project directory holding dvc.yaml, params.yaml and the artifacts.
    """
    logger = get_run_logger()
    logger.info("params: %s", params)
    root = Path(workdir)
    check_inputs(params)
    open_repo(root).close()
    name = flow_run.get_name() or "shrinkflow"
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_url": flow_run.ui_url or "",
        "pipeline": "compress",
    }
    with workspace_lock(root, on_wait=logger.warning):
        write_params_file(root, params)
        with pipeline_run(params, name, tags) as run:
            progress = Progress(STAGES)
            stages = {}
            for stage in STAGES:
                with progress.stage(stage):
                    stages[stage] = _run_or_skip(stage, params, root, logger)
            ws = Workspace(root)
            metrics = json.loads(ws.metrics.read_text())
            save_experiment(root, name)
            tag_versions(root, name, push_if_configured(root))
            log_outputs(ws, headline(metrics))
            version, decision = register_and_gate(params.gate, ws.model, metrics)
            logger.info("gate: version %s %s: %s", version,
                        "promoted to champion" if decision.promote else "not promoted", decision.reason)
        url = mlflow_run_url(params.tracking, run.info.experiment_id, run.info.run_id)
        publish_results(metrics, decision, version, params.gate.registered_model, url)
    return {
        "metrics": metrics,
        "stages": stages,
        "experiment": name,
        "mlflow_run_id": run.info.run_id,
        "model_version": version,
        "promoted": decision.promote,
        "gate": decision.reason,
    }


def _run_or_skip(stage: str, params: Params, root: Path, logger: logging.Logger) -> str:
    """Run `stage` and record it in DVC, or skip it when DVC says it is up to date."""
    with stage_run(stage):
        if is_up_to_date(root, stage):
            logger.info("%s: up to date, skipped", stage)
            log_stage({}, skipped=True)
            return "skipped"
        task, kwargs = stage_call(stage, params, Workspace(root))
        log_stage(task(**kwargs))
        record_stage(root, stage)
        return "ran"
