"""The chain, once: stage order, which config sections each stage gets, and the cheap pre-checks.

The stage modules (TensorFlow, tfmot) are imported by the functions that need them: a run whose
stages are all up to date never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.workspace.connections import check_tracking_uri
from flows.workspace.versioning import nothing_changed
from tasks.artifacts import Workspace
from tasks.choice import apply_choice, chosen_params
from tasks.config import Params
from tasks.errors import InputError
from tasks.inputs import stage_inputs, wait_until_settled

STAGES = ("load", "search", "sparsify", "distill", "quantize", "evaluate")
BEFORE_CHOICE = ("load", "search")


def stage_call(name: str, params: Params,
               ws: Workspace) -> tuple[Callable[..., dict[str, float]], dict[str, Any]]:
    """The compute function of stage `name` and its arguments: only the sections that stage
    reads. The stages after the search read them with the search's chosen keys applied.

    The flow runs it inside its own task (flows/compress.py `run_or_skip`: one task run per stage,
    retried there), so the compute layer knows no Prefect."""
    from flows.search import run_search
    from tasks.distill import run_distill
    from tasks.evaluate import run_evaluate
    from tasks.load import run_load
    from tasks.quantize import run_quantize
    from tasks.sparsify import run_sparsify

    if name not in STAGES:
        raise InputError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    p = params if name in BEFORE_CHOICE else chosen_params(params, ws)
    calls = {
        "load": (run_load, {"seed": p.seed, "data_cfg": p.data, "model_cfg": p.model}),
        "search": (run_search, {"params": p}),
        "sparsify": (run_sparsify,
                     {"seed": p.seed, "cfg": p.sparsify, "prune_teacher": p.prunes_teacher}),
        "distill": (
            run_distill,
            {"seed": p.seed, "cfg": p.distill, "sparsify_cfg": p.sparsify, "gate": p.gate,
             "trust_code": p.model.trust_code},
        ),
        "quantize": (
            run_quantize, {"seed": p.seed, "cfg": p.quantize, "distill_cfg": p.distill}
        ),
        "evaluate": (
            run_evaluate,
            {"cfg": p.evaluate, "sparsified": p.prunes_teacher, "distilled": p.distill.enabled,
             "confidence": p.gate.confidence},
        ),
    }
    function, kwargs = calls[name]
    return function, kwargs | {"ws": ws}


def run_stage(name: str, params: Params, ws: Workspace) -> dict[str, float]:
    """Run one stage from the files the previous one left, outside any flow (dvc.yaml's cmd)."""
    function, kwargs = stage_call(name, params, ws)
    return function(**kwargs)


def check_inputs(params: Params) -> None:
    """Every check that needs no training: bad input fails here, before any work or any write.

    Waits first until no input file is still being written: a half-written teacher is no bad input.
    """
    check_tracking_uri("tracking.uri", params.tracking.uri)
    from flows.search import check_search
    from tasks.data import check_certifiable
    from tasks.evaluate import warn_if_oversubscribed
    from tasks.load import check_beats_chance, open_inputs, warn_if_scaled_twice
    from tasks.models import read_model
    from tasks.qat import quantize_aware
    from tasks.quantize import calibration_samples, check_quantizable
    from tasks.sparsify import check_prunable
    from tasks.students import check_student, smallest_student
    from tasks.views import check_augment

    wait_until_settled({key: path for files in stage_inputs(params).values()
                        for key, path in files.items()})
    inputs = open_inputs(params.data, params.model, params.seed)
    check_certifiable(inputs.data, params.data, params.gate)  # the unlabeled pool's certify part
    warn_if_oversubscribed(params.evaluate)
    warn_if_scaled_twice(inputs.teacher, inputs.data)
    check_augment(params.distill.augment, inputs.data.input_shape)
    if params.sparsify.enabled:
        check_prunable(inputs.teacher, params.sparsify)
    student = inputs.teacher  # the architecture quantize receives, untrained
    if params.distill.enabled:
        if params.distill.student:
            student = read_model(params.distill.student, "distill.student", params.model.trust_code)
            check_student(student, inputs.teacher)
        elif params.distill.width != 1.0:
            student = smallest_student(inputs.teacher, params.distill)
        if params.sparsify.enabled:  # distill prunes the student too (2:4: its own input sizes)
            check_prunable(student, params.sparsify)
    if params.quantize.needs_calibration:
        calibration_samples(inputs.data, params.quantize, params.seed)
    # each mode's section as a trial builds it (validated: Params refuses a mode QAT cannot take)
    for mode in params.search.modes if params.search.enabled else [params.quantize.mode]:
        check_quantizable(student, apply_choice(params, {"quantize.mode": mode}).quantize,
                          inputs.data.train.read(slice(2)))
    if params.quantize.qat_epochs:
        quantize_aware(student)
    if params.search.enabled:
        check_search(params, inputs.teacher, inputs.data)
    if not inputs.needs_training:  # last: the teacher's predictions on the test split
        check_beats_chance(inputs.teacher, inputs.data, params.data)


def check_changed_inputs(params: Params, root: Path) -> bool:
    """`check_inputs`, unless nothing changed since DVC recorded the last run: inputs DVC vouches
    for were checked by that run, and checking again would load TensorFlow and the teacher for
    a run that skips every stage. Returns whether anything changed."""
    changed = not nothing_changed(root, params)
    if changed:
        check_inputs(params)
    return changed
