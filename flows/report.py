"""The summary printed at the end of a run: what ran, what changed, where it is recorded, teacher
vs final."""

from __future__ import annotations

from flows.versioning import Fingerprint

DIGEST_SHOWN = 8  # hex digits of an md5 in messages


def run_summary(report: dict) -> str:
    stages = report["stages"]
    if all(status == "skipped" for status in stages.values()):
        done = "all stages up to date: nothing re-ran"
    else:
        done = ", ".join(f"{stage} {status}" for stage, status in stages.items())
    return "\n".join([
        f"stages: {done}",
        *report["inputs_changed"],
        *([f"search: {report['search']}"] if report.get("search") else []),
        f"recorded as DVC experiment {report['experiment']} and MLflow run {report['mlflow_run_id']}",
        f"registered as version {report['model_version']}: "
        f"{'promoted to champion' if report['promoted'] else 'not promoted'} ({report['gate']})",
        "",
        summary_table(report["metrics"]),
    ])


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


def summary_table(metrics: dict) -> str:
    teacher, final = metrics["teacher"], metrics["final"]
    rows = [
        ("", "teacher", "final", ""),
        ("accuracy", percent(teacher["accuracy"]), percent(final["accuracy"]),
         accuracy_change(metrics)),
        ("params", f"{teacher['params']:,}", f"{final['params']:,}", ""),
        ("sparsity", "", percent(final["sparsity"]), ""),
        (".tflite size", human_size(teacher["tflite_bytes"]), human_size(final["tflite_bytes"]),
         f"{teacher['tflite_bytes'] / final['tflite_bytes']:.1f}x smaller"),
        ("gzip size", human_size(teacher["gzip_bytes"]), human_size(final["gzip_bytes"]),
         f"{metrics['compression_ratio']:.1f}x smaller"),
        ("latency p50", f"{teacher['latency_p50_us']:.1f} us", f"{final['latency_p50_us']:.1f} us",
         f"{metrics['speedup']:.1f}x faster"),
        ("quantization", "fp32", metrics["quantization"]["mode"],
         layer_precisions(metrics["quantization"]["layer_precisions"])),
    ]
    return aligned(rows)


def accuracy_change(metrics: dict) -> str:
    """`-0.56 pt (drop <= 1.82 pt at 95 %)`: the point estimate, and the paired upper bound of the
    drop that the gate holds to gate.max_accuracy_drop."""
    paired = metrics["paired"]
    return (f"{-100 * metrics['accuracy_drop']:+.2f} pt (drop <= {100 * paired['upper']:.2f} pt "
            f"at {100 * paired['confidence']:.4g} %)")


def layer_precisions(counts: dict[str, int]) -> str:
    """`3 int4, 2 int8 layers`: how many weight layers the model stores at each precision."""
    return ", ".join(f"{n} {precision}" for precision, n in sorted(counts.items())) + " layers"


def sensitivity_rows(sensitivity: dict) -> list[dict]:
    """quant_sensitivity.json as table rows: one per op, its validation error with only that op
    quantized at each precision, and the precision it got."""
    return [
        {"layer": layer["layer"], "op": layer["op"], "bytes": layer["bytes"],
         **{f"error {p}": round(e, 4) for p, e in layer["validation_error"].items()},
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


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024**2:.2f} MiB"
