"""The search's Optuna study and its trials (flows/search.py runs them): the study named after what
decides a trial's outcome, kept in a journal file a killed search resumes from, its first trials
the defaults' recipes; one trial as a Prefect task on a Dask worker, stopped as soon as it cannot
win; what Optuna is told of it; where the trials keep their trained students.
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
from tasks.auto_width import PROBE_SHARE
from tasks.choice import Choice, apply_choice
from tasks.config import Params
from tasks.gate import RuleChoice
from tasks.paired import PairedDrop
from tasks.power import CONFIRMED, LIKELY
from tasks.search import (
    DEFAULTS,
    OBJECTIVE_KEYS,
    CannotBeat,
    HopelessTrial,
    TrialResult,
    cached_inputs,
    choose,
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
    """Successive halving whose first rung is where distill.width `auto` judges a student: after
    its probe's epochs (tasks/auto_width.py PROBE_SHARE of distill.epochs: 14 of 40), the epochs
    the defaults give every student before judging it, never sooner. Issue 50: rungs at 4 and 12
    of 40 (distill.epochs / factor^k) cut the narrow students `auto` ships before they had
    learned (every probe starts low: docs/benchmarks.md, cheap width probes), and the search
    shipped a student 1.8x larger. Why not judge where a trial's learning curve is going: its
    chance swings by up to 0.4 between epochs there, so a fitted curve would be one more noisy
    look and a model of curves to defend; a rung where the defaults already judge is simpler and
    as sound as they are. With the default factor 3 the next rung lies past distill.epochs: one
    look, as `auto` takes. The same pruner in this process and in every worker (Optuna does not
    store it)."""
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=math.ceil(PROBE_SHARE * params.distill.epochs),
        reduction_factor=params.search.reduction_factor)


def open_study(ws: Workspace, params: Params, space: dict[str, list],
               defaults: list[Choice]) -> optuna.Study:
    """The study for this exact search, created (its first trials the `defaults` recipes, in
    order, each marked DEFAULTS with its place) or resumed from the workspace's journal; trials a
    killed search left running are marked failed (their work is lost)."""
    sampler = optuna.samplers.TPESampler(seed=params.seed, multivariate=True, constant_liar=True)
    study = optuna.create_study(
        storage=study_storage(ws.root), study_name=study_name(ws, params, space, defaults),
        direction="minimize", sampler=sampler, pruner=pruner(params), load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    if not study.get_trials(deepcopy=False):
        for place, recipe in enumerate(defaults):
            study.enqueue_trial(recipe, user_attrs={DEFAULTS: place})
    return study


def study_name(ws: Workspace, params: Params, space: dict[str, list],
               defaults: list[Choice]) -> str:
    """A digest of what decides a trial's outcome: inputs' content, space, settings and the
    defaults' recipes it starts from."""
    settings = params.model_dump(mode="json",
                                 include={"seed", *SEARCHED_STAGES, "evaluate", "gate"})
    settings["search"] = params.search.model_dump(mode="json", exclude=RUN_CONTROL)
    md5 = hashlib.md5(json.dumps([settings, space, defaults], sort_keys=True).encode())
    for path in (ws.data, ws.teacher):
        md5.update(path.read_bytes())
    return f"search-{md5.hexdigest()[:16]}"


def best_confirmed(study: optuna.Study, objective: str, defaults_only: bool = False) -> float:
    """The objective value of the trial the search would choose now (tasks/search.py `choose`):
    likely to pass (from the selection part), confirmed (from the confirmation part) and no worse
    than the defaults' candidate. Only that one is a size later trials must beat: a trial likely
    on selection but refused at confirmation left nothing to choose (digits, seed 2, 2026-12-03:
    one refused trial kept 23 of 30 larger ones from training), nor does one slower than the
    defaults' candidate. `defaults_only`: among the defaults' trials alone, for one of them: the
    defaults' candidate must be measured whatever else the search found (a `mixed` trial half as
    large would keep every rung from training, and its speed would be compared with nothing)."""
    rows = [row for row in trial_rows(study) if row["state"] == "COMPLETE"
            and (DEFAULTS in row or not defaults_only)]
    chosen, _ = choose(rows, objective)
    return chosen[OBJECTIVE_KEYS[objective]] if chosen else math.inf


def trial_rows(study: optuna.Study) -> list[dict]:
    return [trial_row(trial) for trial in study.get_trials(deepcopy=False)]


def trial_row(trial: FrozenTrial) -> dict:
    """The trial as one flat row: number, state, its choices and what it measured or why not."""
    return {"number": trial.number, "state": trial.state.name, **trial.params, **trial.user_attrs}


def describe_row(row: dict) -> str:
    choice = ", ".join(f"{k}={v}" for k, v in row.items() if "." in k)
    if "upper" not in row:
        return f"trial {row['number']} ({choice}): {row.get('stopped') or row.get('error')}"
    return (f"trial {row['number']} ({choice}): validation drop {100 * row['drop']:+.2f} pt "
            f"(chance to pass {row['chance']:.2f}; confirmation {100 * row['confirm_drop']:+.2f}, "
            f"chance {row['confirm_chance']:.2f}), gzip {row['gzip_bytes']} B, latency "
            f"{row['latency_p50_us']:.1f} µs ({row['slowdown']:.2f}x the teacher's)")


def verdict(chosen: dict, defaults: dict | None) -> str:
    """What the search ships (`chosen`, by `choose`), said against the defaults' candidate
    (`defaults_candidate`): a trial of the defaults' recipes when nothing beat them."""
    if DEFAULTS in chosen:
        return f"the search found nothing better than the defaults' recipe: {describe_row(chosen)}"
    if not defaults:
        return (f"chose {describe_row(chosen)}; none of the defaults' recipes was likely to pass "
                "the gate and confirmed")
    return (f"chose {describe_row(chosen)}; it beats the defaults' recipe, trial "
            f"{defaults['number']} (gzip {defaults['gzip_bytes']} B, latency "
            f"{defaults['latency_p50_us']:.1f} µs)")


@task(name="trial", task_run_name="trial {number}")
def trial_task(number: int, trial_id: int, study: str, choice: Choice, params: Params,
               workdir: str, beat: float, budget: float) -> Outcome:
    """One trial on a Dask worker: the stages' compute with `choice` applied, on the validation
    split; not trained, or stopped after an epoch, when its estimate cannot beat `beat` or a
    trial likely to pass and confirmed finished since; stopped early (not failed) when the
    pruner, told the drop's excess over `budget` (the gate's) after every epoch, says so. A
    trial of the defaults' recipe is stopped by none but theirs (`best_confirmed`)."""
    root = Path(workdir)
    ws = Workspace(root)
    inputs = cached_inputs(ws.data, ws.teacher, params.search.confirm_fraction, params.seed)
    trial = optuna.Trial(optuna.load_study(study_name=study, storage=study_storage(root),
                                           pruner=pruner(params)), trial_id)
    reported: dict[int, float] = {}
    defaults_only = DEFAULTS in trial.user_attrs

    def stop(epoch: int, drop: float) -> bool:
        # the pruner ranks what is left to gain, not accuracy: trials within the budget at a
        # rung tie at 0 and go on whatever their size (the objective decides between them)
        trial.report(max(drop - budget, 0.0), epoch)
        reported[epoch] = drop
        return trial.should_prune()

    def best() -> float:  # trials finished since this one was submitted count too
        return min(beat, best_confirmed(trial.study, params.search.objective, defaults_only))

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
                "slowdown_upper": result.slowdown.upper,
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
