"""The `compress` flow: load -> sparsify -> distill -> quantize -> evaluate, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.stages import STAGES, check_inputs, stage_call
from flows.tracking import log_metrics, log_outputs, pipeline_run, stage_run
from tasks.artifacts import Workspace
from tasks.config import Params
from tasks.evaluate import headline


@flow(name="compress", log_prints=True)
def compress(params: Params = Params(), workdir: str = ".") -> dict:
    """Compress the configured teacher into an INT8 TFLite model; returns metrics.json's content.

    Inputs are checked first (no training, nothing written); then each stage runs as a task in a
    nested MLflow run and leaves its artifacts under `workdir`.
    """
    logger = get_run_logger()
    logger.info("params: %s", params)
    check_inputs(params)
    ws = Workspace(Path(workdir))
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "pipeline": "compress"}
    with pipeline_run(params, flow_run.get_name(), tags):
        for name in STAGES:
            task, kwargs = stage_call(name, params, ws)
            with stage_run(name):
                log_metrics(task(**kwargs))
        metrics = json.loads(ws.metrics.read_text())
        log_outputs(ws, headline(metrics))
    return metrics
