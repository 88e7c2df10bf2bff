"""The search's Optuna study and its trials (flows/search.py runs them): the study named after what
decides a trial's outcome, kept in a journal file a killed search resumes from; one trial as a
Prefect task on a Dask worker, stopped as soon as it cannot win; what Optuna is told of it; where
the trials keep their trained students.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from distributed import get_worker
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.futures import PrefectFuture
from pydantic import ValidationError

from tasks.artifacts import Workspace, copy_file
from tasks.choice import Choice, apply_choice
from tasks.config import Params
from tasks.gate import RuleChoice
from tasks.paired import PairedDrop
from tasks.power import CONFIRMED, LIKELY
from tasks.search import (
    CannotBeat,
    HopelessTrial,
    TrialResult,
    cached_inputs,
    run_trial,
)

STUDY_JOURNAL = Path(".shrinkflow") / "search.journal"
TRIAL_STUDENTS = Path(".shrinkflow") / "search-students"  # <study>/<md5 of the trained choice>.h5
MODE_KEY = "quantize.mode"  # the one searched key that acts after training
# Keys that change how long or where a search runs, not what a trial measures: a study resumed
# with other values is the same study.
RUN_CONTROL = {"trials", "dask_address", "workers", "timeout_minutes", "require_feasible"}
SEARCHED_STAGES = ("sparsify", "distill", "quantize")
# A bug in the search's code, not a failure of a trial's recipe (a layer a mode cannot convert, a
# student that does not build, a worker out of memory): it fails every trial it reaches, and the
# run would go on as if none had been likely to pass. ValidationError: params of a trial that the
# config refuses, which check_inputs should have refused before any work.
BUGS = (TypeError, AttributeError, NameError, LookupError, AssertionError, ValidationError)


class SearchBug(RuntimeError):
    """A trial raised one of BUGS: the search stage fails (resumed, it keeps the trials done)."""


@dataclass(frozen=True)
class Outcome:
    """What a trial task sends back: where it ran, how many epochs it trained, and its result or
    why it was stopped (with what it measured before: the size estimate, the last drop)."""

    worker: str
    epochs: int
    result: TrialResult | None = None
    stopped: str | None = None
    measured: dict[str, float] | None = None


def study_storage(root: Path) -> JournalStorage:
    path = root / STUDY_JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path.resolve())))


def pruner(params: Params) -> optuna.pruners.SuccessiveHalvingPruner:
    """Rungs at distill.epochs / factor^k epochs (at least 1): with 40 epochs and factor 3, 4 and
    12 (the trial task asks no rung past distill.epochs / factor). The same pruner in this process
    and in every worker (Optuna does not store it)."""
    factor = params.search.reduction_factor
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, params.distill.epochs // factor**2), reduction_factor=factor)


def open_study(ws: Workspace, params: Params, space: dict[str, list]) -> optuna.Study:
    """The study for this exact search, created (its first trial the `baseline`) or resumed from
    the workspace's journal; trials a killed search left running are marked failed (their work
    is lost)."""
    sampler = optuna.samplers.TPESampler(seed=params.seed, multivariate=True, constant_liar=True)
    study = optuna.create_study(
        storage=study_storage(ws.root), study_name=study_name(ws, params, space),
        direction="minimize", sampler=sampler, pruner=pruner(params), load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(baseline(params, space))
    return study


def baseline(params: Params, space: dict[str, list]) -> Choice:
    """The first trial of a new search: the configured recipe, each key snapped into the space
    (a value not among its choices, e.g. distill.width auto: the middle choice). A recipe that
    keeps the budget gives every later trial a size to beat before TPE's random start, so larger
    ones are not trained."""
    configured = params.model_dump()
    recipe = {key: configured[section][name] for key in space
              for section, name in [key.split(".")]}
    return {key: recipe[key] if recipe[key] in choices else choices[len(choices) // 2]
            for key, choices in space.items()}


def study_name(ws: Workspace, params: Params, space: dict[str, list]) -> str:
    """A digest of what decides a trial's outcome: inputs' content, space and settings."""
    settings = params.model_dump(mode="json",
                                 include={"seed", *SEARCHED_STAGES, "evaluate", "gate"})
    settings["search"] = params.search.model_dump(mode="json", exclude=RUN_CONTROL)
    md5 = hashlib.md5(json.dumps([settings, space], sort_keys=True).encode())
    for path in (ws.data, ws.teacher):
        md5.update(path.read_bytes())
    return f"search-{md5.hexdigest()[:16]}"


def best_confirmed(study: optuna.Study) -> float:
    """The objective value of the trial the search would choose now: the best of those likely to
    pass (from the selection part) and confirmed (from the confirmation part). Only that one is a
    size later trials must beat: a trial likely on selection but refused at confirmation left
    nothing to choose (digits, seed 2, 2026-12-03: one refused trial kept 23 of 30 larger ones
    from training)."""
    chosen = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if all(c <= 0 for c in t.constraints.values()) and t.user_attrs.get("confirmed")]
    return min(chosen, default=math.inf)


@task(name="trial", task_run_name="trial {number}")
def trial_task(number: int, trial_id: int, study: str, choice: Choice, params: Params,
               workdir: str, beat: float, budget: float) -> Outcome:
    """One trial on a Dask worker: the stages' compute with `choice` applied, on the validation
    split; not trained, or stopped after an epoch, when its estimate cannot beat `beat` or a
    trial likely to pass and confirmed finished since; stopped early (not failed) when the
    pruner, told the drop's excess over `budget` (the gate's) after every epoch, says so."""
    root = Path(workdir)
    ws = Workspace(root)
    inputs = cached_inputs(ws.data, ws.teacher, params.search.confirm_fraction, params.seed)
    trial = optuna.Trial(optuna.load_study(study_name=study, storage=study_storage(root),
                                           pruner=pruner(params)), trial_id)
    reported: dict[int, float] = {}

    def stop(epoch: int, drop: float) -> bool:
        # the pruner ranks what is left to gain, not accuracy: trials within the budget at a
        # rung tie at 0 and go on whatever their size (the objective decides between them)
        trial.report(max(drop - budget, 0.0), epoch)
        reported[epoch] = drop
        # past the last but one rung, stopping saves less than the measurement is worth
        return epoch * params.search.reduction_factor <= params.distill.epochs and \
            trial.should_prune()

    def best() -> float:  # trials finished since this one was submitted count too
        return min(beat, best_confirmed(trial.study))

    worker = get_worker().address
    try:
        result = run_trial(inputs, apply_choice(params, choice), best, stop,
                           trial_student(root, study, choice))
    except CannotBeat as skipped:
        epochs = max(reported, default=0)
        return Outcome(worker, epochs, stopped=f"{skipped}: " + (
                           f"stopped after {epochs} epochs" if epochs else "not trained"),
                       measured={f"estimated_{k}": v for k, v in vars(skipped.estimate).items()})
    except HopelessTrial as hopeless:
        last = max(reported)
        return Outcome(worker, last, stopped=str(hopeless), measured={"drop": reported[last]})
    return Outcome(worker, result.epochs, result=result)


def trial_student(root: Path, study: str, choice: Choice) -> Path:
    """Where the trials of `study` with `choice` keep their trained student (the workspace's
    .shrinkflow/: on a shared filesystem for a remote cluster, as the data and teacher are). The
    quantization mode is left out: it acts after training, so one student serves every mode."""
    trained = choice_key({key: value for key, value in choice.items() if key != MODE_KEY})
    return root / TRIAL_STUDENTS / study / f"{hashlib.md5(trained.encode()).hexdigest()[:16]}.h5"


def keep_chosen_student(ws: Workspace, study: str, chosen: Choice) -> None:
    """The student of the `chosen` choice becomes the distill stage's output
    (artifacts/search/student.h5); the students of earlier searches are deleted, this study's
    kept for a resumed search."""
    source = trial_student(ws.root, study, chosen) if chosen else None
    if source and source.exists():
        copy_file(source, ws.searched_student)
    else:  # none chosen, or its student is gone: the distill stage trains one
        ws.searched_student.unlink(missing_ok=True)
    for earlier in (ws.root / TRIAL_STUDENTS).glob("*"):
        if earlier.name != study:
            shutil.rmtree(earlier)


def finish(study: optuna.Study, trial: optuna.Trial, future: PrefectFuture, rule: RuleChoice,
           objective_key: str, max_slowdown: float) -> FrozenTrial:
    """Tell Optuna how the trial ended: complete (objective; constraints: how far its chance to
    pass, from the selection part, falls short of LIKELY, and how far its slowdown vs the teacher
    exceeds the gate's `max_slowdown` beyond noise), not trained or stopped early
    (pruned), or failed; raises SearchBug, the trial told failed, when it failed on one of BUGS."""
    try:
        outcome: Outcome = future.result()
    except Exception as exc:  # a trial's own failure (e.g. a layer a mode cannot convert), or BUGS
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        failed = study.tell(trial, state=TrialState.FAIL)
        if isinstance(exc, BUGS):
            raise SearchBug(f"trial {trial.number} {trial.params} raised {type(exc).__name__}: "
                            f"{exc}: a bug in the search, not a failure of that recipe") from exc
        return failed
    trial.set_user_attr("worker", outcome.worker)
    trial.set_user_attr("epochs", outcome.epochs)
    if outcome.stopped:
        for key, value in (outcome.measured or {}).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("stopped", outcome.stopped)
        return study.tell(trial, state=TrialState.PRUNED)
    result = outcome.result
    chance, confirm_chance = result.chances(rule.rule)
    too_slow = result.slowdown.excess(max_slowdown)
    attrs = (result.metrics.as_dict() | _paired_attrs("", result.selection)
             | _paired_attrs("confirm_", result.confirmation)
             | {"chance": chance, "confirm_chance": confirm_chance,
                "slowdown": result.slowdown.ratio, "slowdown_lower": result.slowdown.lower,
                "within": chance >= LIKELY and too_slow <= 0,
                "confirmed": confirm_chance >= CONFIRMED})
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("pass_chance", max(0.0, LIKELY - chance))
    trial.set_constraint("speed_floor", max(0.0, too_slow))
    return study.tell(trial, attrs[objective_key])


def _paired_attrs(prefix: str, paired: PairedDrop) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in paired.as_dict().items()
            if k in ("drop", "upper", "worse", "better", "n")}


def repeat(study: optuna.Study, trial: optuna.Trial, earlier: FrozenTrial) -> FrozenTrial:
    """Tell Optuna that `trial` ended as `earlier`, the same choice, instead of training it."""
    for key, value in earlier.user_attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("repeat_of", earlier.number)
    trial.set_user_attr("epochs", 0)
    if earlier.state != TrialState.COMPLETE:
        return study.tell(trial, state=earlier.state)
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, value)
    return study.tell(trial, earlier.value)


def choice_key(choice: Choice) -> str:
    return json.dumps(choice, sort_keys=True)
