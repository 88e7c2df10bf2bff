"""What a run shows in the Prefect UI (a progress bar, a report, a candidates table, MLflow links)
and the events that tell people about it (infra/automations.yaml turns them into notifications)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from flows.record.report import (
    candidate_rows,
    markdown_report,
    markdown_table,
    promotion,
    sensitivity_rows,
    summary_rows,
)
from flows.record.tracking import mlflow_url
from tasks.artifacts import Workspace
from tasks.choice import search_summary
from tasks.config import Params
from tasks.measurements import RunMetrics, percent
from tasks.progress import batch_listener, epoch_listener

if TYPE_CHECKING:
    from mlflow.entities import Run

    from flows.record.gated import Gated


class Progress:
    """A Prefect progress artifact over the stages, moved by training epochs within each; full
    once they are done, saying what the run still does (`finish`), then `done`."""

    def __init__(self, stages: tuple[str, ...]):
        self.stages = stages
        self.artifact = create_progress_artifact(0.0, description=f"stages: {' → '.join(stages)}")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        done = self.stages.index(name)
        share = 100.0 / len(self.stages)
        epochs = epoch_listener.set(
            lambda fraction, _logs: self._set(share * (done + fraction), name))
        batches = batch_listener.set(lambda fraction, rate: self._set(
            share * (done + fraction), f"{name}, {rate:,.0f} samples/s"))
        try:
            yield
        finally:
            epoch_listener.reset(epochs)
            batch_listener.reset(batches)
        self._set(share * (done + 1), name)

    def finish(self, note: str = "done") -> None:
        update_progress_artifact(self.artifact, 100.0, description=note)

    def _set(self, percent: float, stage: str) -> None:
        update_progress_artifact(self.artifact, min(percent, 100.0), description=f"stage: {stage}")


def publish_results(params: Params, ws: Workspace, metrics: RunMetrics, gated: Gated, run: Run,
                    runs_url: str | None) -> None:
    """The markdown report, the model card, the table of candidates, the per-op quantization
    sensitivity (when measured) and the links to the MLflow run and the experiment's runs
    (`runs_url`, None without an MLflow UI); `metrics` is the run's metrics.json."""
    sensitivity = json.loads(ws.quant_sensitivity.read_text())
    page = partial(mlflow_url, params.tracking, run.info.experiment_id, run.info.run_id)
    links = {"MLflow run": page(), "MLflow runs (the experiment)": runs_url} | {
        f"plot: {plot.stem}": page(f"plots/{plot.name}")
        for plot in sorted(ws.plots.glob("*.png"))} if runs_url else {}
    create_markdown_artifact(
        key="compress-report",
        description="Teacher vs final, the gate's decision and what it rests on",
        markdown=markdown_report(metrics, gated, params.gate.registered_model,
                                 search_summary(ws), links),
    )
    create_markdown_artifact(key="model-card", description="model_card.md of the registered model",
                             markdown=gated.card)
    create_table_artifact(
        key="compress-candidates",
        description="Every candidate, measured by the same evaluator",
        table=candidate_rows(metrics),
    )
    if sensitivity["layers"]:
        create_table_artifact(
            key="quant-sensitivity",
            description=f"quantize.mode {sensitivity['mode']}: validation error with only that op "
            f"quantized, and the precision each op got (validation error "
            f"{percent(sensitivity['validation_error'])}, fp32 "
            f"{percent(sensitivity['fp32_validation_error'])})",
            table=sensitivity_rows(sensitivity),
        )
    if runs_url:
        create_link_artifact(key="mlflow-run", link=page(), link_text="MLflow run")
        create_link_artifact(key="mlflow-runs", link=runs_url,
                             link_text="MLflow runs of the experiment")


def publish_repeat(report: dict) -> None:
    """The report of a run that repeats an earlier one (flows/record/unchanged.py): which, and its
    model's figures."""
    verdict = promotion(report["promoted"], report["certified"]).replace("champion", "`champion`")
    create_markdown_artifact(
        key="compress-report",
        description="Nothing changed: a repeat of an earlier run",
        markdown="\n".join([
            "# shrinkflow compress", "",
            (f"Nothing changed since MLflow run `{report['unchanged_since']}`: every stage is up "
             "to date, so its model was not measured, gated or registered again."), "",
            f"Its model is version {report['model_version']}, {verdict}: {report['gate']}.", "",
            markdown_table(summary_rows(RunMetrics.from_json(report["metrics"]))),
            *(["", f"- [MLflow run (this repeat)]({report['mlflow_url']})",
               f"- [MLflow runs (the experiment)]({report['mlflow_runs_url']})"]
              if report.get("mlflow_url") else []),
        ]),
    )


RUN_FAILED = "shrinkflow.run.failed"
CHAMPION_PROMOTED = "shrinkflow.champion.promoted"


@dataclass
class Announcer:
    """Emits a run's Prefect events, each naming the run, the reason and the MLflow run's link."""

    run_name: str
    flow_run_id: str
    mlflow_url: str | None = None  # known once the MLflow run exists

    @contextmanager
    def failures(self) -> Iterator[None]:
        """Emit `shrinkflow.run.failed` for any error raised in the block, then re-raise it."""
        try:
            yield
        except Exception as exc:
            self._emit(RUN_FAILED, f"{type(exc).__name__}: {exc}")
            raise

    def promoted(self, model_name: str, version: str, reason: str, certified: bool) -> None:
        """The promotion event; `certified` False (on the point estimate) is in its reason and
        payload."""
        self._emit(CHAMPION_PROMOTED, f"{model_name} version {version} is the new "
                   f"{promotion(True, certified).removeprefix('promoted to ')}: {reason}",
                   certified=certified)

    def _emit(self, event: str, reason: str, **payload: object) -> None:
        emit_event(
            event=event,
            resource={"prefect.resource.id": f"shrinkflow.run.{self.flow_run_id}",
                      "prefect.resource.name": self.run_name},
            related=[{"prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}",
                      "prefect.resource.role": "flow-run"}] if self.flow_run_id else None,
            payload={"run_name": self.run_name, "reason": reason,
                     "mlflow_url": self.mlflow_url or "none (the run failed before its MLflow run)",
                     **payload},
        )
