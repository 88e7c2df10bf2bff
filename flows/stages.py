"""The chain, once: stage order, which config sections each stage gets, and the cheap pre-checks."""

from __future__ import annotations

from typing import Any

from prefect import Task

from flows.search import check_search, chosen_params, search_task
from tasks.artifacts import Workspace
from tasks.config import Params
from tasks.distill import check_student, derive_student, distill_task
from tasks.errors import InputError
from tasks.evaluate import evaluate_task
from tasks.inputs import stage_inputs, wait_until_settled
from tasks.load import load_task, open_inputs
from tasks.models import read_model
from tasks.quantize import calibration_samples, quantize_task
from tasks.sparsify import check_prunable, sparsify_task

STAGES = ("load", "search", "sparsify", "distill", "quantize", "evaluate")
BEFORE_CHOICE = ("load", "search")


def stage_call(name: str, params: Params, ws: Workspace) -> tuple[Task, dict[str, Any]]:
    """The task for stage `name` and its arguments: only the sections that stage reads. The
    stages after the search read them with the search's chosen keys applied."""
    if name not in STAGES:
        raise InputError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    p = params if name in BEFORE_CHOICE else chosen_params(params, ws)
    calls = {
        "load": (load_task, {"seed": p.seed, "data_cfg": p.data, "model_cfg": p.model}),
        "search": (search_task, {"params": p}),
        "sparsify": (sparsify_task, {"seed": p.seed, "cfg": p.sparsify}),
        "distill": (
            distill_task,
            {"seed": p.seed, "cfg": p.distill, "sparsify_cfg": p.sparsify,
             "trust_code": p.model.trust_code},
        ),
        "quantize": (quantize_task, {"seed": p.seed, "cfg": p.quantize}),
        "evaluate": (
            evaluate_task,
            {"cfg": p.evaluate, "sparsified": p.sparsify.enabled, "distilled": p.distill.enabled},
        ),
    }
    task, kwargs = calls[name]
    return task, kwargs | {"ws": ws}


def run_stage(name: str, params: Params, ws: Workspace) -> dict[str, float]:
    """Run one stage from the files the previous one left, outside any flow (dvc.yaml's cmd)."""
    task, kwargs = stage_call(name, params, ws)
    return task.fn(**kwargs)


def check_inputs(params: Params) -> None:
    """Every check that needs no training: bad input fails here, before any work or any write.

    Waits first until no input file is still being written: a half-written teacher is no bad input.
    """
    wait_until_settled({key: path for files in stage_inputs(params).values()
                        for key, path in files.items()})
    inputs = open_inputs(params.data, params.model, params.seed)
    if params.sparsify.enabled:
        check_prunable(inputs.teacher, params.sparsify)
    if params.distill.enabled:
        if params.distill.student:
            student = read_model(params.distill.student, "distill.student", params.model.trust_code)
            check_student(student, inputs.teacher)
        elif params.distill.width < 1.0:
            derive_student(inputs.teacher, params.distill.width, params.distill.init)
    if params.quantize.enabled:
        calibration_samples(inputs.data, params.quantize, params.seed)
    if params.search.enabled:
        check_search(params, inputs.teacher, inputs.data)
