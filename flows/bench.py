"""`shrinkflow bench`: the pipeline against the recipes tutorials print, on the same data, the same
teacher and the same evaluator.

The pipeline's own load stage runs once, in a temp workspace; every recipe (flows/recipes.py) then
starts from its data split and trained teacher and ends at a .tflite, measured by
`tasks.evaluate.evaluate_tflite` (test split, LiteRT, 1 thread, batch 1). A recipe's wall time
covers teacher -> .tflite only: neither training the teacher nor measuring is in it. With
`overhead`, the real `shrinkflow run` is also timed, cold and warm, in a fresh copy of the project.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import mlflow

from flows.recipes import COMPRESS_STAGES, RECIPES, REFERENCE, Bench, run_stages
from flows.record.report import (
    aligned,
    human_size,
    latency,
    markdown_table,
    memory,
    percent,
    threads,
)
from flows.record.tracking import pipeline_run
from flows.stages import STAGES, check_inputs
from flows.workspace.params import flatten
from flows.workspace.versioning import init_workspace
from tasks.artifacts import Workspace, write_bytes, write_json
from tasks.config import Params, QuantizeConfig, TrackingConfig
from tasks.errors import InputError
from tasks.evaluate import evaluate_tflite
from tasks.inputs import APPLICATIONS_PREFIX
from tasks.measurements import CandidateMetrics, Comparison
from tasks.models import read_model
from tasks.plots import plot_tradeoff
from tasks.splits import Dataset

T = TypeVar("T")

BENCH_JSON = Path("metrics") / "bench.json"
BENCH_MD = Path("reports") / "bench.md"
BENCH_PLOT = Path("plots") / "bench.png"
PROJECT_FILES = ("dvc.yaml", ".gitignore", "tasks")  # what a fresh project copy needs (+ params)
SHRINKFLOW = Path(sys.executable).parent / "shrinkflow"  # the installed console script
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def bench_command(params: Params, overhead: bool) -> int:
    """`shrinkflow bench`: run the bench in this directory and print its table."""
    print(bench_table(run_bench(params, Path("."), overhead)))
    return 0


def run_bench(params: Params, root: Path, overhead: bool) -> dict:
    """Build and measure every recipe; write bench.json, bench.md and bench.png under `root`, and
    log them with every `<recipe>.<metric>` to one MLflow run named "bench". Returns bench.json."""
    check_inputs(params)
    if overhead:
        check_project(root)
    with (
        pipeline_run(params, "bench", {"pipeline": "bench"}),
        tempfile.TemporaryDirectory(prefix="shrinkflow-bench-") as tmp,
    ):
        ws = Workspace(Path(tmp))
        _, load_s = timed(run_stages, ["load"], params, ws)
        bench = Bench(params, ws, Dataset.load(ws.data), read_model(ws.teacher))
        recipes = measure_recipes(bench)
        document = {
            "params": params.model_dump(mode="json"),
            "config": str(params),
            "machine": machine_facts(),
            "test_samples": len(bench.data.test),
            "recipes": {name: row.as_dict() for name, row in recipes.items()},
        }
        if overhead:
            rest = [stage for stage in STAGES if stage != "load" and stage not in COMPRESS_STAGES]
            _, rest_s = timed(run_stages, rest, params, ws)
            in_process_s = load_s + recipes["shrinkflow"].wall_s + rest_s
            document["overhead"] = measure_overhead(params, root, in_process_s)
        paths = write_outputs(document, root)
        mlflow.log_metrics(bench_metrics(document))
        for path in paths:
            mlflow.log_artifact(str(path))
    return document


@dataclass(frozen=True)
class RecipeRow:
    """One recipe, flat in bench.json: the evaluator's metrics, the headline ratios against fp32
    (as metrics.json's final vs teacher) and the recipe's wall time."""

    metrics: CandidateMetrics
    vs_reference: Comparison
    wall_s: float

    @classmethod
    def from_dict(cls, flat: dict[str, float]) -> RecipeRow:
        return cls(CandidateMetrics.from_dict(flat), Comparison.from_dict(flat), flat["wall_s"])

    def as_dict(self) -> dict[str, float]:
        return self.metrics.as_dict() | self.vs_reference.as_dict() | {"wall_s": self.wall_s}


def measure_recipes(bench: Bench) -> dict[str, RecipeRow]:
    """Build every recipe (timed), measure it with the pipeline's evaluator, compare it to fp32."""
    measured: dict[str, tuple[CandidateMetrics, float]] = {}
    for name, recipe in RECIPES.items():
        built, wall_s = timed(recipe, bench)
        metrics = evaluate_tflite(built.tflite, bench.data, bench.params.evaluate, built.params)
        measured[name] = metrics, wall_s
    reference = measured[REFERENCE][0]
    return {name: RecipeRow(metrics, Comparison.of(reference, metrics), wall_s)
            for name, (metrics, wall_s) in measured.items()}


def measure_overhead(params: Params, root: Path, in_process_s: float) -> dict[str, float | bool]:
    """Time `shrinkflow run` twice in a fresh copy of the project: cold, then warm (all skipped).

    The subprocess also pays interpreter start-up and imports, which `in_process_s` does not:
    `import_s` times those alone (`import flows.compress` pulls in the whole stack) so the ratio
    is reported with and without them. The cold run also creates the copy's MLflow database.
    """
    with tempfile.TemporaryDirectory(prefix="shrinkflow-overhead-") as tmp:
        project = Path(tmp)
        copy_project(params, root, project)
        _, import_s = _timed_command([sys.executable, "-c", "import flows.compress"], project)
        _, run_s = _timed_command([str(SHRINKFLOW), "run"], project)
        warm_summary, warm_s = _timed_command([str(SHRINKFLOW), "run"], project)
    return {
        "in_process_s": in_process_s,
        "import_s": import_s,
        "run_s": run_s,
        "run_ratio": run_s / in_process_s,
        "run_ratio_without_imports": (run_s - import_s) / in_process_s,
        "warm_run_s": warm_s,
        "warm_ratio": warm_s / run_s,
        # flows.record.report.run_summary's words
        "warm_all_skipped": "nothing re-ran" in warm_summary,
    }


def check_project(root: Path) -> None:
    """The overhead runs copy this project: refuse, before any work, a directory that is none."""
    missing = [name for name in PROJECT_FILES if not (root / name).exists()]
    if missing:
        raise InputError(
            f"bench --overhead copies the project, but {root.resolve()} has no "
            f"{', '.join(missing)}; run it from the project directory"
        )


def copy_project(params: Params, root: Path, target: Path) -> None:
    """A fresh project in `target`: this one's dvc.yaml, .gitignore and stage sources, `params`
    as params.yaml, then git + DVC with a first commit (as the `dvc_project` fixture makes one)."""
    for name in PROJECT_FILES:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    init_workspace(target, relocated_params(params, root))


def relocated_params(params: Params, root: Path) -> Params:
    """`params` for a copy of the project elsewhere: relative input paths resolved against `root`,
    and MLflow in the copy's own sqlite file so the timed runs stay out of the configured store."""
    moved = params.model_copy(deep=True)
    moved.data.source = _relocated_source(moved.data.source, root)
    if moved.data.unlabeled:
        moved.data.unlabeled = _relocated_source(moved.data.unlabeled, root)
    if moved.model.source != "train" and not moved.model.source.startswith(APPLICATIONS_PREFIX):
        moved.model.source = _absolute(moved.model.source, root)
    if moved.model.weights:
        moved.model.weights = _absolute(moved.model.weights, root)
    if moved.distill.student:
        moved.distill.student = _absolute(moved.distill.student, root)
    moved.tracking.uri = TrackingConfig().uri
    return moved


def _relocated_source(source: str, root: Path) -> str:
    """A data source `KIND:PATH` with its path resolved against `root` (`digits` as it is)."""
    kind, sep, location = source.partition(":")
    return f"{kind}:{_absolute(location, root)}" if sep else source


def machine_facts() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "litert": version("ai-edge-litert"),
    }


def write_outputs(document: dict, root: Path) -> list[Path]:
    """bench.json, bench.md and bench.png under `root`, each written atomically."""
    json_path, md_path, plot_path = root / BENCH_JSON, root / BENCH_MD, root / BENCH_PLOT
    write_json(json_path, document)
    write_bytes(md_path, bench_markdown(document).encode())
    plot_tradeoff(document["recipes"], plot_path)
    return [json_path, md_path, plot_path]


def bench_metrics(document: dict) -> dict[str, float]:
    """`<recipe>.<metric>` for every row, and `overhead.<figure>` when measured, for MLflow."""
    flat = flatten(document["recipes"]) | flatten(document.get("overhead", {}), "overhead.")
    return {key: float(value) for key, value in flat.items()}


def bench_table(document: dict) -> str:
    """The terminal table, one row per recipe, then the overhead figures when measured."""
    lines = [aligned(_table(document))]
    if "overhead" in document:
        lines += ["", *overhead_lines(document["overhead"])]
    return "\n".join(lines)


def bench_markdown(document: dict) -> str:
    """reports/bench.md: what ran where, the table, what each recipe is, the overhead."""
    m, evaluate = document["machine"], document["params"]["evaluate"]
    lines = [
        "# shrinkflow bench",
        "",
        f"`{document['config']}` on {m['machine']}, {m['cpu_count']} CPUs, {m['date']}; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, LiteRT {m['litert']}.",
        "",
        markdown_table(_table(document)),
        "",
        f"Every row is measured by the pipeline's evaluator on the test split "
        f"({document['test_samples']} samples): LiteRT, batch 1, latency p50 / p90 of "
        f"{evaluate['latency_runs']} invokes at each thread count, speedup at the first; memory "
        "is the heap the interpreter holds (arena, packed weights). Compression is gzip-9 bytes "
        "relative to fp32. Wall time runs from the trained teacher to the .tflite.",
        "",
        *(f"- `{name}`: {RECIPES[name].__doc__}" for name in document["recipes"]),
    ]
    if "overhead" in document:
        overhead = overhead_lines(document["overhead"])
        lines += ["", "## Overhead", "", *(f"- {line}" for line in overhead)]
    return "\n".join(lines) + "\n"


def overhead_lines(o: dict) -> list[str]:
    """The two overhead figures as sentences: the cold run against in-process, warm against cold."""
    skipped = "every stage skipped by DVC" if o["warm_all_skipped"] else "NOT every stage skipped"
    return [
        f"`shrinkflow run`, fresh project: {o['run_s']:.1f} s = {o['run_ratio']:.2f}x the same "
        f"stages called in one process ({o['in_process_s']:.1f} s); "
        f"{o['run_ratio_without_imports']:.2f}x without interpreter start-up and imports "
        f"({o['import_s']:.1f} s)",
        f"warm re-run ({skipped}): {o['warm_run_s']:.1f} s = {o['warm_ratio']:.2f}x the first run",
    ]


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """`fn`'s result and its wall time in seconds."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _table(document: dict) -> list[tuple[str, ...]]:
    """The header, then one row per recipe."""
    rows = {name: RecipeRow.from_dict(flat) for name, flat in document["recipes"].items()}
    counts = next(iter(rows.values())).metrics.thread_counts()
    header = ("recipe", "accuracy", "vs fp32", ".tflite", "gzip", "compression",
              *(f"p50 / p90, {threads(n)}" for n in counts), "speedup", "memory", "wall time")
    return [header, *(
        (
            _label(name, document),
            percent(row.metrics.accuracy),
            f"{-100 * row.vs_reference.accuracy_drop or 0.0:+.2f} pt",  # `or`: -0.0 shows as +0.00
            human_size(row.metrics.tflite_bytes),
            human_size(row.metrics.gzip_bytes),
            f"{row.vs_reference.compression_ratio:.1f}x",
            *(latency(row.metrics, n) for n in counts),
            f"{row.vs_reference.speedup:.1f}x",
            memory(row.metrics.memory_bytes),
            f"{row.wall_s:.1f} s",
        )
        for name, row in rows.items()
    )]


def _label(name: str, document: dict) -> str:
    """The recipe's name; the pipeline's row also shows its quantization mode."""
    if name != "shrinkflow":
        return name
    return f"{name} ({QuantizeConfig(**document['params']['quantize']).effective_mode})"


def _timed_command(command: list[str], cwd: Path) -> tuple[str, float]:
    """Run `command` in `cwd`: its stdout and wall time.

    Gotcha: the console script imports whatever the editable install points at; PYTHONPATH puts
    the code this process runs first, so both sides of the comparison run the same code.
    """
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    done, seconds = timed(subprocess.run, command, cwd=cwd, env=os.environ | {"PYTHONPATH": path},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed in {cwd} (exit {done.returncode}):\n"
            f"{done.stderr[-3000:]}"
        )
    return done.stdout, seconds


def _absolute(path: str, root: Path) -> str:
    return str((root / Path(path).expanduser()).resolve())
