"""The search stage: an Optuna study over the recipe whose trials are Prefect tasks on Dask.

The study lives in this process. It asks Optuna for a choice, submits a trial task to the Dask
cluster (a local one, or the scheduler at `search.dask_address`) and tells Optuna the result when
it comes back, keeping as many trials in flight as the cluster has worker threads. Workers read
only the workspace's data and teacher files (once per process; a remote cluster needs the
workspace on a shared filesystem) and never touch Optuna's storage or MLflow.

Why Optuna's multi-objective TPE: few trials over categorical choices with a constraint (NSGA-II
wants populations of ~50); objectives validation accuracy, gzip bytes and latency; the accuracy
drop a constraint (`Trial.set_constraint`). Its RDB storage (sqlite in .shrinkflow/) lets a killed
search resume: the study is named after everything that decides a trial's outcome, so the same
search finds its finished trials again and runs only the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import mlflow
import optuna
from distributed import get_worker
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect_dask import DaskTaskRunner

from tasks.artifacts import Workspace, write_json
from tasks.choice import Choice, apply_choice
from tasks.config import Params, SearchConfig
from tasks.data import Dataset
from tasks.errors import InputError
from tasks.evaluate import CandidateMetrics, evaluate_tflite
from tasks.plots import plot_pareto
from tasks.quantize import convert_to_tflite
from tasks.search import (
    HopelessTrial,
    cached_inputs,
    choose,
    run_trial_or_stop,
    search_space,
    trial_memory_bytes,
)

if TYPE_CHECKING:
    import tf_keras as keras

STUDY_DB = Path(".shrinkflow") / "search.db"
OBJECTIVES = {"accuracy": "maximize", "gzip_bytes": "minimize", "latency_p50_us": "minimize"}
# Keys that change how long or where a search runs, or which point it keeps, not what a trial
# measures: a study resumed with other values is the same study.
RUN_CONTROL = {"trials", "dask_address", "workers", "timeout_minutes", "require_feasible",
               "objective"}
SEARCHED_STAGES = ("sparsify", "distill", "quantize")
CONNECT_TIMEOUT_S = 5
CLOSEST_SHOWN = 3


class NoFeasibleTrial(RuntimeError):
    """No trial met search.max_accuracy_drop, and search.require_feasible is set: the run fails."""


@dataclass(frozen=True)
class Outcome:
    """What a trial task sends back: where it ran, and its metrics or why it was stopped."""

    worker: str
    metrics: dict[str, float] | None = None
    stopped: str | None = None


def check_search(params: Params, teacher: keras.Model, data: Dataset) -> None:
    """The search's pre-checks, before any training: the searched stages are on, the space is not
    empty, a trial fits a local worker's memory, the Dask scheduler answers."""
    cfg = params.search
    conflicts = [f"{stage}.enabled: false" for stage in SEARCHED_STAGES
                 if not getattr(params, stage).enabled]
    conflicts += ["a distill.student file"] if params.distill.student else []
    if conflicts:
        raise InputError(f"search.enabled: the search sets sparsify, distill and quantize keys, so "
                         f"it cannot run with {' and '.join(conflicts)}; turn those stages on and "
                         "leave distill.student empty, or set search.enabled: false")
    search_space(cfg, params, teacher)
    if cfg.dask_address:
        check_reachable(cfg.dask_address)
    else:
        check_memory(cfg, trial_memory_bytes(teacher, data, params.distill.batch_size))


def check_reachable(address: str) -> None:
    """A TCP connection to the scheduler, so a wrong address fails before any training."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=CONNECT_TIMEOUT_S):
            return
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"search.dask_address: no Dask scheduler answers at {address!r} ({exc}); "
                         "start one (`dask scheduler`), fix the address (tcp://HOST:PORT) or "
                         "leave it empty for a local cluster") from None


def check_memory(cfg: SearchConfig, trial_bytes: int) -> None:
    """Each local worker gets an equal share of the machine's memory (Dask's own default limit)."""
    workers = local_workers(cfg)
    share = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // workers
    if trial_bytes > share:
        raise InputError(f"search.workers: a trial needs about {trial_bytes / 2**30:.2f} GiB, but "
                         f"{workers} local workers get {share / 2**30:.2f} GiB each; set "
                         f"search.workers to at most {max(1, workers * share // trial_bytes)}, "
                         "use smaller data or a smaller teacher, or a cluster "
                         "(search.dask_address)")


def local_workers(cfg: SearchConfig) -> int:
    return cfg.workers or os.cpu_count() or 1


def task_runner(cfg: SearchConfig) -> DaskTaskRunner:
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": local_workers(cfg), "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": ":0"})


def run_search(params: Params, ws: Workspace) -> dict[str, float]:
    """Stage: artifacts/chosen.json (the keys the stages after it take from the chosen trial) and
    artifacts/search/ (trials.json, pareto.png). Off: no keys, the configured recipe runs."""
    if not params.search.enabled:
        (ws.search / "pareto.png").unlink(missing_ok=True)
        write_json(ws.search / "trials.json", {"trials": []})
        write_json(ws.chosen, {"keys": {}})
        return {}
    active = mlflow.active_run()
    searching = search.with_options(task_runner=task_runner(params.search))
    return searching(params, str(ws.root.resolve()), active.info.run_id if active else None)


search_task = task(run_search, name="search")


@flow(name="search", log_prints=True)
def search(params: Params, workdir: str, mlflow_parent: str | None = None) -> dict[str, float]:
    """Search the recipe space for the best model within search.max_accuracy_drop.

    Args:
        params: The pipeline configuration; its `search` section sets the space and budget.
        workdir: The project directory holding artifacts/data.npz and artifacts/teacher.h5.
        mlflow_parent: The MLflow run the trials' runs nest under (none: not tracked).
    """
    cfg, ws = params.search, Workspace(Path(workdir))
    data, teacher = cached_inputs(ws.data, ws.teacher)
    space = search_space(cfg, params, teacher)
    reference = evaluate_tflite(convert_to_tflite(teacher), data.for_selection(), params.evaluate,
                                teacher.count_params())
    floor = reference.accuracy - cfg.max_accuracy_drop
    warn_if_coarse(len(data.y_val), cfg.max_accuracy_drop)
    study = open_study(ws, params, space)
    run_trials(study, params, workdir, space, floor, mlflow_parent)
    return publish(study, params, ws, space, reference, mlflow_parent)


def warn_if_coarse(validation_samples: int, max_drop: float) -> None:
    """Measured here: on digits (144 validation samples) a drop of 0.003 admits a student that
    makes as many validation errors as the teacher yet 3 points more on the test split."""
    if 1 / validation_samples > max_drop:
        get_run_logger().warning(
            "search: one of the %d validation samples is %.4f of accuracy, more than "
            "search.max_accuracy_drop %s: trials within it may differ from the teacher by noise "
            "alone; raise data.val_fraction (or search.max_accuracy_drop)",
            validation_samples, 1 / validation_samples, max_drop)


def open_study(ws: Workspace, params: Params, space: dict[str, list]) -> optuna.Study:
    """The study for this exact search, created or resumed from the workspace's sqlite storage;
    trials a killed search left running are marked failed (their work is lost)."""
    (ws.root / STUDY_DB).parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=params.seed, multivariate=True, constant_liar=True)
    study = optuna.create_study(
        storage=f"sqlite:///{(ws.root / STUDY_DB).resolve()}",
        study_name=study_name(ws, params, space),
        directions=list(OBJECTIVES.values()), sampler=sampler, load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    return study


def study_name(ws: Workspace, params: Params, space: dict[str, list]) -> str:
    """A digest of what decides a trial's outcome: inputs' content, space and settings."""
    settings = params.model_dump(mode="json", include={"seed", *SEARCHED_STAGES, "evaluate"})
    settings["search"] = params.search.model_dump(mode="json", exclude=RUN_CONTROL)
    md5 = hashlib.md5(json.dumps([settings, space], sort_keys=True).encode())
    for path in (ws.data, ws.teacher):
        md5.update(path.read_bytes())
    return f"search-{md5.hexdigest()[:16]}"


def run_trials(study: optuna.Study, params: Params, workdir: str, space: dict[str, list],
               floor: float, mlflow_parent: str | None) -> None:
    """Ask, submit, tell until `search.trials` trials are done (those of an earlier, killed run of
    the same search count) or `search.timeout_minutes` passed. A choice already measured, or being
    measured, is not trained again: Optuna is told the earlier result."""
    cfg, logger = params.search, get_run_logger()
    distributions = {key: CategoricalDistribution(choices) for key, choices in space.items()}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    measured = {_key(t.params): t for t in done}
    todo = max(0, cfg.trials - len(done))
    deadline = time.monotonic() + cfg.timeout_minutes * 60 if cfg.timeout_minutes else math.inf
    in_flight = cluster_threads()
    progress = create_progress_artifact(100.0 * len(done) / cfg.trials,
                                        description=f"search: {len(done)}/{cfg.trials} trials")
    pending: dict[PrefectFuture, optuna.Trial] = {}
    twins: list[optuna.Trial] = []  # asked while the same choice was being measured
    while todo or pending:
        while todo and len(pending) < in_flight and time.monotonic() < deadline:
            trial, todo = study.ask(distributions), todo - 1
            if _key(trial.params) in measured:
                log_trial(mlflow_parent, repeat(study, trial, measured[_key(trial.params)], floor))
            elif _key(trial.params) in {_key(t.params) for t in pending.values()}:
                twins.append(trial)
            else:
                pending[trial_task.submit(trial.number, trial.params, params, workdir,
                                          floor - cfg.prune_margin)] = trial
        if not pending:
            break
        future = next(as_completed(list(pending)))
        frozen = finish(study, pending.pop(future), future, floor)
        if frozen.state != TrialState.FAIL:
            measured[_key(frozen.params)] = frozen
        for twin in [t for t in twins if _key(t.params) == _key(frozen.params)]:
            twins.remove(twin)
            log_trial(mlflow_parent, repeat(study, twin, frozen, floor))
        logger.info("trial %d %s: %s", frozen.number, frozen.state.name.lower(),
                    _describe(frozen))
        log_trial(mlflow_parent, frozen)
        finished = cfg.trials - todo - len(pending) - len(twins)
        update_progress_artifact(progress, 100.0 * finished / cfg.trials,
                                 description=f"search: {finished}/{cfg.trials} trials")


def cluster_threads() -> int:
    """Worker threads of this flow's Dask cluster, started here (on first use). A local cluster's
    workers report their task runs to this flow's Prefect API, a temporary server too (else each
    worker process would start a temporary server of its own)."""
    context = FlowRunContext.get()
    runner = context.task_runner
    if not runner.address:
        runner.cluster_kwargs["env"] = {"PREFECT_API_URL": str(context.client.api_url)}
    return max(1, sum(runner.client.nthreads().values()))


@task(name="trial", task_run_name="trial {number}")
def trial_task(number: int, choice: Choice, params: Params, workdir: str,
               stop_below: float) -> Outcome:
    """One trial on a Dask worker: the stages' compute with `choice` applied, on the validation
    split; stopped early (not failed) when hopeless."""
    ws = Workspace(Path(workdir))
    data, teacher = cached_inputs(ws.data, ws.teacher)
    worker = get_worker().address
    try:
        metrics = run_trial_or_stop(teacher, data, apply_choice(params, choice), stop_below)
    except HopelessTrial as stop:
        return Outcome(worker, stopped=str(stop))
    return Outcome(worker, metrics=metrics.as_dict())


def finish(study: optuna.Study, trial: optuna.Trial, future: PrefectFuture,
           floor: float) -> FrozenTrial:
    """Tell Optuna how the trial ended: complete (values, constraint), stopped early, or failed."""
    try:
        outcome: Outcome = future.result()
    except Exception as exc:  # a trial's own failure (e.g. a layer a mode cannot convert)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        return study.tell(trial, state=TrialState.FAIL)
    trial.set_user_attr("worker", outcome.worker)
    if outcome.stopped:
        trial.set_user_attr("stopped", outcome.stopped)
        return study.tell(trial, state=TrialState.PRUNED)
    for key, value in outcome.metrics.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("accuracy_floor", floor - outcome.metrics["accuracy"])
    return study.tell(trial, [outcome.metrics[key] for key in OBJECTIVES])


def repeat(study: optuna.Study, trial: optuna.Trial, earlier: FrozenTrial,
           floor: float) -> FrozenTrial:
    """Tell Optuna that `trial` ended as `earlier`, the same choice, instead of training it."""
    for key, value in earlier.user_attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("repeat_of", earlier.number)
    if earlier.state != TrialState.COMPLETE:
        return study.tell(trial, state=earlier.state)
    trial.set_constraint("accuracy_floor", floor - earlier.user_attrs["accuracy"])
    return study.tell(trial, earlier.values)


def publish(study: optuna.Study, params: Params, ws: Workspace, space: dict[str, list],
            reference: CandidateMetrics, mlflow_parent: str | None) -> dict[str, float]:
    """Choose, then write chosen.json, trials.json and pareto.png, and show them in MLflow and
    Prefect. No trial within the budget: the closest goes on, promoted by no gate; or, with
    search.require_feasible, the run fails naming the closest."""
    cfg = params.search
    floor = reference.accuracy - cfg.max_accuracy_drop
    rows = trial_rows(study)
    measured = [row for row in rows if row["state"] == "COMPLETE"]
    chosen, feasible = choose(measured, floor, cfg.objective) if measured else ({}, False)
    pareto = {t.number for t in study.best_trials}
    for row in rows:
        row |= {"pareto": row["number"] in pareto, "chosen": row is chosen}
    closest = sorted(measured, key=lambda row: -row["accuracy"])[:CLOSEST_SHOWN]
    reason = "" if feasible else (
        f"search: no trial reached validation accuracy {floor:.4f} (teacher "
        f"{reference.accuracy:.4f} - search.max_accuracy_drop {cfg.max_accuracy_drop}); closest: "
        + ("; ".join(_describe_row(row) for row in closest) or f"none of {len(rows)} completed"))
    record = {"teacher": reference.as_dict(), "floor": floor, "space": space, "trials": rows}
    publish_artifacts(rows, floor, reason, ws, mlflow_parent, record)
    if not feasible and cfg.require_feasible:
        raise NoFeasibleTrial(f"{reason} (search.require_feasible is set)")
    keys = {key: chosen[key] for key in space} if chosen else {}
    if mlflow_parent:
        MlflowClient().set_tag(mlflow_parent, "search.chosen",
                               _describe_row(chosen) if chosen else "none")
    write_json(ws.chosen, {"keys": keys, "trial": chosen.get("number"), "feasible": feasible,
                           "reason": reason or "within search.max_accuracy_drop",
                           "validation": {k: chosen.get(k) for k in OBJECTIVES}})
    get_run_logger().info("search: %s", _describe_row(chosen) if chosen else reason)
    return {"search.trials_completed": len(measured), "search.feasible": float(feasible),
            **{f"search.chosen.{k}": chosen[k] for k in OBJECTIVES if chosen},
            "search.teacher.accuracy": reference.accuracy}


def trial_rows(study: optuna.Study) -> list[dict]:
    """One flat row per trial: number, state, its choices and what it measured or why not."""
    return [{"number": t.number, "state": t.state.name, **t.params, **t.user_attrs}
            for t in study.get_trials(deepcopy=False)]


def publish_artifacts(rows: list[dict], floor: float, reason: str, ws: Workspace,
                      mlflow_parent: str | None, record: dict) -> None:
    """trials.json and pareto.png in the workspace, in the search's MLflow run, and as Prefect
    table and markdown (the plot inline) artifacts."""
    write_json(ws.search / "trials.json", record)
    plot = ws.search / "pareto.png"
    plot_pareto([row for row in rows if row["state"] == "COMPLETE"], floor, plot)
    if mlflow_parent:
        for path in (ws.search / "trials.json", plot):
            MlflowClient().log_artifact(mlflow_parent, str(path), artifact_path="search")
    columns = sorted({key for row in rows for key in row}, key=_column_order)
    create_table_artifact(key="search-trials", description="Every trial of the search",
                          table=[{key: row.get(key, "") for key in columns} for row in rows])
    image = base64.b64encode(plot.read_bytes()).decode()
    create_markdown_artifact(
        key="search-pareto", description="Validation accuracy vs gzip size, latency as colour",
        markdown=f"# shrinkflow search\n\n{reason or 'chosen: within the accuracy budget'}\n\n"
                 f"![Pareto front](data:image/png;base64,{image})",
    )


def log_trial(mlflow_parent: str | None, trial: FrozenTrial) -> None:
    """The trial as an MLflow run nested under the search stage's: choices as params, what it
    measured on the validation split as metrics, worker and state as tags."""
    if not mlflow_parent:
        return
    client = MlflowClient()
    experiment = client.get_run(mlflow_parent).info.experiment_id
    measured = {f.name for f in fields(CandidateMetrics)}
    numbers = {k: v for k, v in trial.user_attrs.items() if k in measured}
    texts = {k: str(v) for k, v in trial.user_attrs.items() if k not in measured}
    run = client.create_run(experiment, run_name=f"trial {trial.number}", tags={
        "mlflow.parentRunId": mlflow_parent, "search.state": trial.state.name, **texts})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(f"val.{k}", float(v), now, 0) for k, v in numbers.items()],
                     params=[Param(k, str(v)) for k, v in trial.params.items()],
                     tags=[RunTag("search.number", str(trial.number))])
    client.set_terminated(run.info.run_id,
                          "FINISHED" if trial.state != TrialState.FAIL else "FAILED")


def _key(choice: Choice) -> str:
    return json.dumps(choice, sort_keys=True)


def _describe(trial: FrozenTrial) -> str:
    return _describe_row({**trial.params, **trial.user_attrs, "number": trial.number})


def _describe_row(row: dict) -> str:
    choice = ", ".join(f"{k}={v}" for k, v in row.items() if "." in k)
    if "accuracy" not in row:
        return f"trial {row['number']} ({choice}): {row.get('stopped') or row.get('error')}"
    return (f"trial {row['number']} ({choice}): validation accuracy {row['accuracy']:.4f}, "
            f"gzip {row['gzip_bytes']} B, latency {row['latency_p50_us']:.1f} µs")


def _column_order(key: str) -> tuple[int, str]:
    first = ["number", "state", "chosen", "pareto", *OBJECTIVES]
    return (first.index(key), key) if key in first else (len(first) + ("." not in key), key)

