"""The search stage: an Optuna study over the recipe whose trials are Prefect tasks on Dask (the
study and one trial: flows/trials.py).

The study lives in this process. It asks Optuna for a choice, submits a trial task to the Dask
cluster (a local one, or the scheduler at `search.dask_address`) and tells Optuna the result when
it comes back, keeping as many trials in flight as the cluster has worker threads. Workers read
only the workspace's data and teacher files (once per process; a remote cluster needs the
workspace on a shared filesystem), report each epoch to the study's storage (for the pruner) and
never touch MLflow.

- It starts from the defaults: the first trials are what the stages would run without it (each
  rung of distill.width `auto`'s ladder, smallest first), and it ships a trial only when it beats
  the defaults' candidate (the smallest of them likely to pass, confirmed) on the objective and
  is no larger and not slower beyond noise; else the defaults' candidate, and says so.
- One objective (gzip bytes or latency, `search.objective`), the chance to pass the gate a
  constraint (`Trial.set_constraint`): the objective is known before training
  (tasks/estimate.py), so a trial that cannot beat the one the search would choose now (likely
  to pass and confirmed) is not trained at all, and a training one stops as soon as another
  such trial makes it one that cannot win.
- One student per training choice: the quantization mode acts after training, so a trial that
  differs from an earlier one only in mode quantizes its student instead of training it again.
- Multi-fidelity: Optuna's `SuccessiveHalvingPruner` (asynchronous successive halving) on the
  float student's validation drop in excess of the budget per epoch: from the epochs distill.width
  `auto` gives a probe (a third of distill.epochs) a trial goes on only while it is in the best
  1/factor of the trials measured there, and those within the budget there all go on (size, not
  accuracy, decides between them).
- Choosing aims at the gate (tasks/power.py): a trial counts ("within") when its chance of
  passing the gate's rule on the test split, from its paired counts vs the teacher on the
  validation split's selection part, is at least LIKELY and it is not slower than the teacher
  beyond noise by more than gate.max_slowdown (the gate's speed floor, tasks/speed.py); the
  chosen one's chance from the confirmation part, which the sampler and pruner never see, must
  be at least CONFIRMED. The gate certifies, not this.
- The study's journal file in .shrinkflow/ (file-locked: workers on other processes or hosts
  sharing the workspace write to it) lets a killed search resume: the study is named after
  everything that decides a trial's outcome, so the same search finds its finished trials again.
"""

from __future__ import annotations

import base64
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import dask
import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect_dask import DaskTaskRunner

from flows.trials import (
    SEARCHED_STAGES,
    best_confirmed,
    choice_key,
    describe_row,
    finish,
    keep_chosen_student,
    open_study,
    repeat,
    trial_row,
    trial_rows,
    trial_task,
    verdict,
)
from tasks.artifacts import Workspace, write_json
from tasks.config import Params, SearchConfig
from tasks.errors import InputError
from tasks.gate import RuleChoice, announce_rule, rule_for
from tasks.models import read_model
from tasks.plots import plot_pareto
from tasks.power import CONFIRMED, LIKELY
from tasks.search import (
    DEFAULTS,
    OBJECTIVE_KEYS,
    choose,
    closest_trials,
    defaults_candidate,
    defaults_recipes,
    pareto_front,
    search_space,
    trial_memory_bytes,
    validation_parts,
)
from tasks.splits import Dataset

if TYPE_CHECKING:
    import tf_keras as keras

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS
# sooner): glibc then trims after nearly every free of TensorFlow's per-step tensors. Measured
# here: distillation epochs 1.6-1.9x slower, half the CPU time in the kernel. Local workers start
# without it (a remote cluster's are configured where they start: README).
dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

SHOWN = ("accuracy", "drop", "chance", "confirm_drop", "confirm_chance", "gzip_bytes",
         "latency_p50_us", "slowdown")
CONNECT_TIMEOUT_S = 5


class NoFeasibleTrial(RuntimeError):
    """No trial is likely to pass the gate, and search.require_feasible is set: the run fails."""


def check_search(params: Params, teacher: keras.Model, data: Dataset) -> None:
    """The search's pre-checks, before any training: the searched stages are on, the space is not
    empty, both parts of the validation split can hold every class, a trial fits a local worker's
    memory, the Dask scheduler answers."""
    cfg = params.search
    conflicts = [f"{stage}.enabled: false" for stage in SEARCHED_STAGES
                 if not getattr(params, stage).enabled]
    conflicts += ["a distill.student file"] if params.distill.student else []
    if conflicts:
        raise InputError(f"search.enabled: the search sets sparsify, distill and quantize keys, so "
                         f"it cannot run with {' and '.join(conflicts)}; turn those stages on and "
                         "leave distill.student empty, or set search.enabled: false")
    search_space(cfg, params, teacher)
    selection, confirmation = validation_parts(len(data.val), cfg)
    if min(selection, confirmation) < data.num_classes:
        raise InputError(f"search.confirm_fraction: the {len(data.val)} validation samples split "
                         f"into {selection} for selection and {confirmation} for confirmation, "
                         f"fewer than the {data.num_classes} classes; raise data.val_fraction "
                         "(or give x_val/y_val in the npz) or move search.confirm_fraction "
                         "towards 0.5")
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
                                          "processes": True, "dashboard_address": ":0",
                                          "env": tensorflow_threads(cfg)})


def tensorflow_threads(cfg: SearchConfig) -> dict[str, str]:
    """Each local worker's TensorFlow keeps to its share of the cores: by default it sizes its
    thread pools to the whole machine in every worker. Measured (2 cores, two trials at once,
    0.25-wide student of the 1.7 M CNN): 5.2 s per epoch oversubscribed, 4.0 s at one thread
    each. Read when TensorFlow starts, so set in the workers' environment (the Nanny's `env`)."""
    share = max(1, (os.cpu_count() or 1) // local_workers(cfg))
    return {"TF_NUM_INTRAOP_THREADS": str(share), "TF_NUM_INTEROP_THREADS": "1"}


def run_search(params: Params, ws: Workspace) -> dict[str, float]:
    """Stage: artifacts/chosen.json (the keys the stages after it take from the chosen trial) and
    artifacts/search/ (trials.json, pareto.png). Off: no keys, the configured recipe runs."""
    if not params.search.enabled:
        for stale in (ws.search / "pareto.png", ws.searched_student):
            stale.unlink(missing_ok=True)
        write_json(ws.search / "trials.json", {"trials": []})
        write_json(ws.chosen, {"keys": {}})
        return {}
    active = mlflow.active_run()
    searching = search.with_options(task_runner=task_runner(params.search))
    return searching(params, str(ws.root.resolve()), active.info.run_id if active else None)



@flow(name="search", log_prints=True)
def search(params: Params, workdir: str, mlflow_parent: str | None = None) -> dict[str, float]:
    """Search the recipe space for the best model likely to pass the gate.

    Args:
        params: The pipeline configuration; its `search` section sets the space, its `gate`
            section the rule trials aim at.
        workdir: The project directory holding artifacts/splits.json and artifacts/teacher.h5.
        mlflow_parent: The MLflow run the trials' runs nest under (none: not tracked).
    """
    cfg, ws = params.search, Workspace(Path(workdir))
    # the teacher's logits and answers are the workers' (cached_inputs): not computed here
    teacher = read_model(ws.teacher)
    defaults = defaults_recipes(params, teacher)
    space = search_space(cfg, params, teacher, defaults)
    rule = rule_for(params.gate, Dataset.load(ws.data))
    announce_rule(rule, params.gate)
    study = open_study(ws, params, space, defaults)
    run_trials(study, params, workdir, space, rule, mlflow_parent, max(cfg.trials, len(defaults)))
    return publish(study, params, ws, space, rule, mlflow_parent)


def run_trials(study: optuna.Study, params: Params, workdir: str, space: dict[str, list],
               rule: RuleChoice, mlflow_parent: str | None, trials: int) -> None:
    """Ask, submit, tell until `trials` trials are done (search.trials, or the defaults' recipes
    if more: the search measures all of them; those of an earlier, killed run of the same search
    count) or `search.timeout_minutes` passed. A choice already measured, or being measured, is
    not trained again: Optuna is told the earlier result. Each trial is told the best objective
    value among those likely to pass so far: it is not trained unless it can beat it."""
    cfg, logger = params.search, get_run_logger()
    distributions = {key: CategoricalDistribution(choices) for key, choices in space.items()}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    measured = {choice_key(t.params): t for t in done}
    todo = max(0, trials - len(done))
    deadline = time.monotonic() + cfg.timeout_minutes * 60 if cfg.timeout_minutes else math.inf
    in_flight = cluster_threads()
    progress = create_progress_artifact(100.0 * len(done) / trials,
                                        description=f"search: {len(done)}/{trials} trials")
    pending: dict[PrefectFuture, optuna.Trial] = {}
    twins: list[optuna.Trial] = []  # asked while the same choice was being measured
    while todo or pending:
        while todo and len(pending) < in_flight and time.monotonic() < deadline:
            trial, todo = study.ask(distributions), todo - 1
            if choice_key(trial.params) in measured:
                log_trial(mlflow_parent, repeat(study, trial, measured[choice_key(trial.params)]))
            elif choice_key(trial.params) in {choice_key(t.params) for t in pending.values()}:
                twins.append(trial)
            else:
                # Optuna names a trial in its storage by `_trial_id`; a worker's Trial needs it.
                beat = best_confirmed(study, cfg.objective, DEFAULTS in trial.user_attrs)
                pending[trial_task.submit(trial.number, trial._trial_id, study.study_name,
                                          trial.params, params, workdir, beat,
                                          rule.rule.budget)] = trial
        if not pending:
            break
        future = next(as_completed(list(pending)))
        frozen = finish(study, pending.pop(future), future, rule, OBJECTIVE_KEYS[cfg.objective],
                        params.gate.max_slowdown)
        if frozen.state != TrialState.FAIL:
            measured[choice_key(frozen.params)] = frozen
        for twin in [t for t in twins if choice_key(t.params) == choice_key(frozen.params)]:
            twins.remove(twin)
            log_trial(mlflow_parent, repeat(study, twin, frozen))
        logger.info("trial %d %s: %s", frozen.number, frozen.state.name.lower(),
                    describe_row(trial_row(frozen)))
        log_trial(mlflow_parent, frozen)
        finished = trials - todo - len(pending) - len(twins)
        update_progress_artifact(progress, 100.0 * finished / trials,
                                 description=f"search: {finished}/{trials} trials")


def cluster_threads() -> int:
    """Worker threads of this flow's Dask cluster, started here (on first use). A local cluster's
    workers report their task runs to this flow's Prefect API, a temporary server too (else each
    worker process would start a temporary server of its own)."""
    context = FlowRunContext.get()
    runner = context.task_runner
    if not runner.address:
        runner.cluster_kwargs["env"] = {"PREFECT_API_URL": str(context.client.api_url)}
    return max(1, sum(runner.client.nthreads().values()))


def publish(study: optuna.Study, params: Params, ws: Workspace, space: dict[str, list],
            rule: RuleChoice, mlflow_parent: str | None) -> dict[str, float]:
    """Choose (the best likely to pass, confirmed, no worse than the defaults' candidate), then
    write chosen.json, trials.json and pareto.png, and show them in MLflow and Prefect. No trial
    likely to pass and confirmed: the closest (greatest chance from the selection part) goes on,
    promoted by no gate; or, with search.require_feasible, the run fails naming the closest."""
    cfg = params.search
    rows = trial_rows(study)
    measured = [row for row in rows if row["state"] == "COMPLETE"]
    chosen, refused = choose(measured, cfg.objective)
    defaults = defaults_candidate(measured)
    closest = closest_trials(measured)
    # on the selection part, as every trial measured it: a paired drop is the accuracy difference
    teacher_accuracy = next((row["accuracy"] + row["drop"] for row in measured), None)
    front = pareto_front(measured, cfg.objective)
    for row in rows:
        row |= {"chosen": row is chosen, "pareto": row["number"] in front,
                "refused_at_confirmation": row in refused}
    reason = "" if chosen else (
        f"search: no trial was likely to pass the gate (chance >= {LIKELY} from the selection "
        f"part, >= {CONFIRMED} from the confirmation part) "
        f"({rule.rule.require} within gate.max_accuracy_drop {100 * rule.rule.budget:.2f} pt on "
        f"{rule.rule.n:,} test samples, and not slower than the teacher beyond noise by more "
        f"than gate.max_slowdown {params.gate.max_slowdown:g}x)"
        + (f" (teacher validation accuracy {teacher_accuracy:.4f})" if measured else "")
        + "; closest: "
        + ("; ".join(describe_row(row) for row in closest) or f"none of {len(rows)} completed"))
    chosen = chosen or (closest[0] if closest else {})
    epochs = sum(row.get("epochs", 0) for row in rows)
    record = {"teacher_accuracy": teacher_accuracy, "gate": rule.describe(params.gate),
              "likely": LIKELY, "confirmed": CONFIRMED, "space": space,
              "defaults_candidate": defaults and defaults["number"],
              "epochs_trained": epochs, "epochs_if_all_full": len(rows) * params.distill.epochs,
              "trials": rows}
    publish_artifacts(rows, rule.rule.budget, reason, ws, mlflow_parent, record)
    if reason and cfg.require_feasible:
        raise NoFeasibleTrial(f"{reason} (search.require_feasible is set)")
    keys = {key: chosen[key] for key in space} if chosen else {}
    keep_chosen_student(ws, study.study_name, keys)
    if mlflow_parent:
        MlflowClient().set_tag(mlflow_parent, "search.chosen",
                               describe_row(chosen) if chosen else "none")
    summary = (f"{reason or verdict(chosen, defaults)}; {epochs} epochs "
               f"trained in all ({len(rows)} trials x {params.distill.epochs} epochs: "
               f"{len(rows) * params.distill.epochs})")
    write_json(ws.chosen, {"keys": keys, "trial": chosen.get("number"), "feasible": not reason,
                           "reason": reason or "likely to pass the gate, confirmed",
                           "validation": {k: chosen.get(k) for k in SHOWN}, "summary": summary})
    get_run_logger().info("search: %s", summary)
    return {"search.trials_completed": len(measured), "search.feasible": float(not reason),
            "search.epochs_trained": epochs,
            **({"search.teacher.accuracy": teacher_accuracy} if measured else {}),
            **{f"search.chosen.{k}": chosen[k] for k in SHOWN if k in chosen}}


def publish_artifacts(rows: list[dict], budget: float, reason: str, ws: Workspace,
                      mlflow_parent: str | None, record: dict) -> None:
    """trials.json and pareto.png in the workspace, in the search's MLflow run, and as Prefect
    table and markdown (the plot inline) artifacts."""
    write_json(ws.search / "trials.json", record)
    plot = ws.search / "pareto.png"
    plot_pareto([row for row in rows if row["state"] == "COMPLETE"], budget, plot)
    if mlflow_parent:
        for path in (ws.search / "trials.json", plot):
            MlflowClient().log_artifact(mlflow_parent, str(path), artifact_path="search")
    columns = sorted({key for row in rows for key in row}, key=_column_order)
    create_table_artifact(key="search-trials", description="Every trial of the search",
                          table=[{key: row.get(key, "") for key in columns} for row in rows])
    image = base64.b64encode(plot.read_bytes()).decode()
    create_markdown_artifact(
        key="search-pareto",
        description="Accuracy drop vs the teacher (bar: to its upper bound) vs gzip size",
        markdown=f"# shrinkflow search\n\n{reason or 'chosen: likely to pass the gate'}\n\n"
                 f"![Pareto front](data:image/png;base64,{image})",
    )


def log_trial(mlflow_parent: str | None, trial: FrozenTrial) -> None:
    """The trial as an MLflow run nested under the search stage's: choices as params, what it
    measured on the validation split (with its paired drop and bound) as metrics, worker, state
    and verdicts as tags."""
    if not mlflow_parent:
        return
    client = MlflowClient()
    experiment = client.get_run(mlflow_parent).info.experiment_id
    numbers = {k: v for k, v in trial.user_attrs.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    texts = {k: str(v) for k, v in trial.user_attrs.items() if k not in numbers}
    run = client.create_run(experiment, run_name=f"trial {trial.number}", tags={
        "mlflow.parentRunId": mlflow_parent, "search.state": trial.state.name, **texts})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(f"val.{k}", float(v), now, 0) for k, v in numbers.items()],
                     params=[Param(k, str(v)) for k, v in trial.params.items()],
                     tags=[RunTag("search.number", str(trial.number))])
    client.set_terminated(run.info.run_id,
                          "FINISHED" if trial.state != TrialState.FAIL else "FAILED")


def _column_order(key: str) -> tuple[int, str]:
    first = ["number", "state", "chosen", "pareto", "within", "confirmed", *SHOWN, "epochs"]
    return (first.index(key), key) if key in first else (len(first) + ("." not in key), key)
