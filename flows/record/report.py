"""What a run reports: the summary printed at its end (what ran, what changed, where it is
recorded, teacher vs final) and the markdown report in the Prefect UI (the same table, the gate's
comparison with the champion, the search's choice, links to MLflow)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from flows.workspace.versioning import Fingerprint
from tasks.measurements import CandidateMetrics, Comparison, RunMetrics, human_size, percent
from tasks.profile import OpTime
from tasks.speed import Slowdown, speed_change
from tasks.task import TASKS

if TYPE_CHECKING:
    from flows.record.gated import Gated

DIGEST_SHOWN = 8  # hex digits of an md5 in messages


def run_summary(report: dict) -> str:
    """What ran, what changed, where the run is recorded, the gate, teacher vs final (`report`:
    the compress flow's, metrics.json as JSON in it). A run that repeats an earlier one
    (flows/record/unchanged.py) says which, and that its model is that run's."""
    metrics = RunMetrics.from_json(report["metrics"])
    stages = report["stages"]
    if all(status == "skipped" for status in stages.values()):
        done = "all stages up to date: nothing re-ran"
    else:
        done = ", ".join(f"{stage} {status}" for stage, status in stages.items())
    verdict = promotion(report["promoted"], report.get("certified", True))
    since = report.get("unchanged_since")
    return "\n".join([
        f"stages: {done}",
        *report["inputs_changed"],
        *([f"search: {report['search']}"] if report.get("search") else []),
        *([f"student: {report['student']}"] if report.get("student") else []),
        f"recorded as DVC experiment {report['experiment']} and MLflow run {report['mlflow_run_id']}",
        *([f"MLflow: this run {report['mlflow_url']}",
           f"        all runs {report['mlflow_runs_url']}"] if report.get("mlflow_url") else []),
        (f"unchanged since MLflow run {since}: its model, version {report['model_version']}, "
         f"{verdict} ({report['gate']})" if since else
         f"registered as version {report['model_version']}: {verdict} ({report['gate']})"),
        "",
        summary_table(metrics),
        *([slowest_line(metrics.slowest_ops, metrics.slowdown.threads)]
          if metrics.slowest_ops else []),
    ])


def promotion(promoted: bool, certified: bool) -> str:
    """`promoted to champion`, `promoted to champion UNCERTIFIED (on the point estimate)` or
    `not promoted`: an uncertified promotion says so wherever a run's verdict is shown."""
    if not promoted:
        return "not promoted"
    return "promoted to champion" + ("" if certified else " UNCERTIFIED (on the point estimate)")


def headline_line(figures: Comparison, promoted: bool, certified: bool) -> str:
    """What a reviewer sees first, on one line, the verdict first (MLflow's runs table shows a
    description's first 50 characters): `promoted UNCERTIFIED: 40.8x smaller (gzip), 12.4x faster,
    accuracy drop +0.28 pt`, else `promoted (certified): …` or `not promoted: …`. `figures`: the
    final model vs the teacher, from metrics.json. A slower model says
    `2.60x SLOWER` (`speed_change`; `speedup` is the teacher's latency over the model's)."""
    verdict = ("not promoted" if not promoted else
               "promoted (certified)" if certified else "promoted UNCERTIFIED")
    return (f"{verdict}: {figures.compression_ratio:.1f}x smaller (gzip), "
            f"{speed_change(figures.speedup)}, "
            f"accuracy drop {100 * figures.accuracy_drop:+.2f} pt")


def input_changes(before: dict[str, Fingerprint], after: dict[str, Fingerprint]) -> list[str]:
    """One line per input whose file or content differs from the last run's record, e.g.
    `model.source changed: md5 f914ab12… → 2f11cd34…`. A first run has nothing to compare."""
    lines = []
    for key, new in after.items():
        old = before.get(key)
        if old is None or old == new:
            continue
        digests = f"md5 {_short(old.md5)} → {_short(new.md5)}"
        where = "" if old.path == new.path else f"{old.path} → {new.path}, "
        lines.append(f"{key} changed: {where}{digests}")
    return lines


def _short(md5: str) -> str:
    return f"{md5[:DIGEST_SHOWN]}…{'.dir' if md5.endswith('.dir') else ''}"


def slowest_line(ops: Sequence[OpTime], count: int) -> str:
    """`slowest ops of the final model, 1 thread: UNIDIRECTIONAL_SEQUENCE_LSTM #0 1171.0 us
    (96 %), ...` (tasks/profile.py; timed at `count` threads)."""
    return f"slowest ops of the final model, {threads(count)}: {', '.join(map(str, ops))}"


def summary_table(metrics: RunMetrics) -> str:
    return aligned(summary_rows(metrics))


def markdown_report(metrics: RunMetrics, gated: Gated, model_name: str, search: str | None,
                    links: dict[str, str]) -> str:
    """The Prefect report: teacher vs final, the gate's decision with the figures it rests on,
    the search's choice, and `links` (title -> URL)."""
    verdict = promotion(gated.decision.promote, gated.certified).replace("champion", "`champion`")
    return "\n".join([
        "# shrinkflow compress", "",
        markdown_table(summary_rows(metrics)), "",
        *([slowest_line(metrics.slowest_ops, metrics.slowdown.threads), ""]
          if metrics.slowest_ops else []),
        "## Gate", "",
        f"`{model_name}` version {gated.version} **{verdict}**: {gated.decision.reason}.", "",
        *gate_comparison(gated.measured, gated.champion),
        *(["## Search", "", search, ""] if search else []),
        "## Links", "",
        *(f"- [{title}]({url})" for title, url in links.items()),
        *([] if links else ["- MLflow run: no UI to link to; see `mlflow ui` in the project"]),
    ])


def gate_comparison(measured: dict[str, float], champion: str | None) -> list[str]:
    """The candidate beside the champion it was measured with on this run's test split, and the
    paired drops (vs the teacher, vs the champion) with their bounds, as markdown."""
    who = {"candidate": "this run's model"} | ({"champion": f"champion (version {champion})"}
                                             if "gate.champion.accuracy" in measured else {})
    rows = [("test split", *who.values()),
            ("accuracy", *(percent(measured[f"gate.{w}.accuracy"]) for w in who)),
            ("gzip size", *(human_size(int(measured[f"gate.{w}.gzip_bytes"])) for w in who)),
            ("latency p50 / p90", *(f"{measured[f'gate.{w}.latency_p50_us']:.1f} / "
                                    f"{measured[f'gate.{w}.latency_p90_us']:.1f} us" for w in who)),
            ("runtime memory", *(memory(measured[f"gate.{w}.memory_bytes"]) for w in who))]
    vs = {"teacher": "vs the teacher", "champion": "vs the champion"}
    return [markdown_table(rows), "",
            *(f"- {paired_line(measured, f'gate.{who}_drop', what)}"
              for who, what in vs.items() if f"gate.{who}_drop" in measured),
            *(f"- {what}: {slowdown_line(measured, f'gate.{who}_slowdown', f'the {who}')}"
              for who, what in vs.items() if f"gate.{who}_slowdown.ratio" in measured), ""]


def slowdown_line(measured: dict[str, float], key: str, reference: str) -> str:
    """`latency 6.3 vs the teacher's 87.8 us (0.07x, between ...)`: a slowdown from the gate's
    metrics, `key` its prefix (flows/record/registry.py)."""
    values = {field.name: measured[f"{key}.{field.name}"] for field in fields(Slowdown)}
    return Slowdown(**values | {"rounds": int(values["rounds"]),
                                "threads": int(values["threads"])}).describe(reference)


def paired_line(measured: dict[str, float], key: str, what: str) -> str:
    """`vs the teacher: drop +0.28 pt, between -0.40 and +0.98 pt at 95 % (worse on 2, better on 1
    of 360 samples)`: a paired drop from the gate's metrics (`drop_metrics`), `key` its prefix."""
    confidence = measured[f"{key}.confidence"]
    count = {field: int(measured[f"{key}.{field}"]) for field in ("worse", "better", "n")}
    return (f"{what}: drop {100 * measured[key]:+.2f} pt, between "
            f"{100 * measured[f'{key}.lower']:+.2f} and {100 * measured[f'{key}.upper']:+.2f} pt at "
            f"{100 * confidence:.4g} % (worse on {count['worse']}, better on {count['better']} of "
            f"{count['n']} samples)")


def summary_rows(metrics: RunMetrics) -> list[tuple[str, ...]]:
    """Teacher vs final, one row per figure, with a header row."""
    teacher, final = metrics.teacher, metrics.final
    return [
        ("", "teacher", "final", ""),
        (TASKS[metrics.task].metric, percent(teacher.accuracy), percent(final.accuracy),
         accuracy_change(metrics)),
        ("params", f"{teacher.params:,}", f"{final.params:,}", ""),
        ("sparsity", "", percent(final.sparsity), ""),
        (".tflite size", human_size(teacher.tflite_bytes), human_size(final.tflite_bytes),
         f"{teacher.tflite_bytes / final.tflite_bytes:.1f}x smaller"),
        ("gzip size", human_size(teacher.gzip_bytes), human_size(final.gzip_bytes),
         f"{metrics.comparison.compression_ratio:.1f}x smaller"),
        *((f"latency p50 / p90, {threads(n)}", latency(teacher, n), latency(final, n),
           speed_change(teacher.latency_at(n)[0] / final.latency_at(n)[0]))
          for n in final.thread_counts()),
        ("runtime memory", memory(teacher.memory_bytes), memory(final.memory_bytes),
         f"{teacher.memory_bytes / final.memory_bytes:.1f}x less"),
        ("quantization", "fp32", metrics.quantization.mode,
         layer_precisions(metrics.quantization.layer_precisions)),
        *([("runs on", kernels(teacher), kernels(final), "XNNPACK refused it: see the log")]
          if not final.xnnpack else []),
    ]


def kernels(measured: CandidateMetrics) -> str:
    """What runs a candidate in LiteRT: `XNNPACK`, or `built-in kernels` where XNNPACK refused it
    (tasks/tflite.py `TFLiteClassifier`)."""
    return "XNNPACK" if measured.xnnpack else "built-in kernels"


def threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"


def latency(measured: CandidateMetrics, count: int) -> str:
    """`41.2 / 45.0 us`: batch-1 latency p50 / p90 at `count` threads."""
    p50, p90 = measured.latency_at(count)
    return f"{p50:.1f} / {p90:.1f} us"


def memory(held: float) -> str:
    """The runtime's heap (tasks/tflite.py `memory_bytes`); n/a where it cannot be measured."""
    return "n/a" if math.isnan(held) else human_size(int(held))


def accuracy_change(metrics: RunMetrics) -> str:
    """`-0.56 pt (drop <= 1.82 pt at 95 %)`: the point estimate, and the paired upper bound of the
    drop that the gate holds to gate.max_accuracy_drop."""
    return (f"{-100 * metrics.comparison.accuracy_drop:+.2f} pt (drop <= "
            f"{100 * metrics.accuracy_drop_upper:.2f} pt at "
            f"{100 * metrics.paired.confidence:.4g} %)")


def layer_precisions(counts: dict[str, int]) -> str:
    """`3 int4, 2 int8 layers`: how many weight layers the model stores at each precision."""
    return ", ".join(f"{n} {precision}" for precision, n in sorted(counts.items())) + " layers"


def candidate_rows(metrics: RunMetrics) -> list[dict[str, str]]:
    """metrics.json's candidates (the teacher and the final model among them) as table rows, in
    the units of the report: a person reads `98.06 %` and `9.3 KiB`, not 0.9805555555555555."""
    return [
        {"candidate": name, "accuracy": percent(measured.accuracy),
         "params": f"{measured.params:,}", "sparsity": percent(measured.sparsity),
         ".tflite size": human_size(measured.tflite_bytes),
         "gzip size": human_size(measured.gzip_bytes),
         **{f"latency p50 / p90, {threads(n)}": latency(measured, n)
            for n in measured.thread_counts()},
         "runtime memory": memory(measured.memory_bytes),
         "2:4 blocks": percent(measured.blocks_2_4), "runs on": kernels(measured)}
        for name, measured in metrics.candidates.items()
    ]


def sensitivity_rows(sensitivity: dict) -> list[dict]:
    """quant_sensitivity.json as table rows: one per op, its validation error with only that op
    quantized at each precision, and the precision it got."""
    return [
        {"layer": layer["layer"], "op": layer["op"], "size": human_size(layer["bytes"]),
         **{f"error {p}": percent(e) for p, e in layer["validation_error"].items()},
         "precision": layer["precision"]}
        for layer in sensitivity["layers"]
    ]


def aligned(rows: list[tuple[str, ...]]) -> str:
    """Columns padded to width: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """A markdown table whose first row is the header: the first column left-aligned, the rest
    right-aligned."""
    lines = [rows[0], ("---", *("---:" for _ in rows[0][1:])), *rows[1:]]
    return "\n".join("| " + " | ".join(cell or " " for cell in line) + " |" for line in lines)

