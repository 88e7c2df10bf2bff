"""`shrinkflow bench`: the pipeline against the recipes tutorials print, on the same data, the same
teacher and the same evaluator.

The pipeline's own load stage runs once, in a temp workspace; every recipe then starts from its
data split and trained teacher and ends at a .tflite, measured by `tasks.evaluate.evaluate_tflite`
(test split, LiteRT, 1 thread, batch 1). A recipe's wall time covers teacher -> .tflite only:
neither training the teacher nor measuring is in it. With `overhead`, the real `shrinkflow run` is
also timed, cold and warm, in a fresh copy of the project.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import mlflow
import numpy as np

from flows.params import flatten
from flows.report import (
    aligned,
    human_size,
    latency,
    markdown_table,
    memory,
    percent,
    thread_counts,
    threads,
)
from flows.stages import STAGES, check_inputs, run_stage
from flows.tracking import pipeline_run
from flows.versioning import init_workspace
from tasks.artifacts import Workspace, copy_file, write_bytes, write_json
from tasks.config import Params, QuantizeConfig, SparsifyConfig, TrackingConfig
from tasks.errors import InputError
from tasks.evaluate import CandidateMetrics, evaluate_tflite, summarize
from tasks.inputs import APPLICATIONS_PREFIX
from tasks.models import read_model, seed_everything
from tasks.plots import plot_tradeoff
from tasks.qat import quantization_aware_training
from tasks.quantize import calibration_samples, convert_to_tflite, quantize_model
from tasks.sparsify import sparsify
from tasks.splits import Dataset

if TYPE_CHECKING:
    import tf_keras as keras

T = TypeVar("T")

BENCH_JSON = Path("metrics") / "bench.json"
BENCH_MD = Path("reports") / "bench.md"
BENCH_PLOT = Path("plots") / "bench.png"
REFERENCE = "fp32"
HEADLINE = ("accuracy_drop", "compression_ratio", "speedup")
# teacher -> .tflite: the shrinkflow recipe (the search as configured: off by default)
COMPRESS_STAGES = ("search", "sparsify", "distill", "quantize")
# The tfmot pruning guide's recipe: 50 % -> 80 % polynomial decay while fine-tuning 2 epochs at
# batch 128 with Adam's default rate. Gotcha: tasks.sparsify reaches the target at 70 % of the
# steps (the guide at 100 %) and shrinks the update frequency to fit short runs.
GUIDE_PRUNING = SparsifyConfig(
    initial_sparsity=0.5, final_sparsity=0.8, frequency=100,
    epochs=2, batch_size=128, learning_rate=1e-3,
)
BENCH_QAT_EPOCHS = 4  # the qat row's epochs when quantize.qat_epochs is 0 (off)
PROJECT_FILES = ("dvc.yaml", ".gitignore", "tasks")  # what a fresh project copy needs (+ params)
SHRINKFLOW = Path(sys.executable).parent / "shrinkflow"  # the installed console script
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class Built(NamedTuple):
    """What a recipe makes: the .tflite file and the parameter count of its Keras model."""

    tflite: bytes
    params: int


@dataclass(frozen=True)
class Bench:
    """What every recipe starts from: the load stage's outputs, in the pipeline's temp workspace."""

    params: Params
    ws: Workspace
    data: Dataset
    teacher: keras.Model


def fp32(bench: Bench) -> Built:
    """The teacher as an FP32 .tflite: the reference row."""
    return Built(convert_to_tflite(bench.teacher), bench.teacher.count_params())


def ptq_random_calib(bench: Bench) -> Built:
    """Full-INT8 PTQ calibrated on seeded random-uniform inputs in the range of the real
    calibration samples (tutorials)."""
    x = _calibration(bench)
    shape = x.shape
    noise = np.random.default_rng(bench.params.seed).uniform(x.min(), x.max(), shape)
    return Built(convert_to_tflite(bench.teacher, "int8", noise.astype(np.float32)),
                 bench.teacher.count_params())


def ptq_int8(bench: Bench) -> Built:
    """Full-INT8 PTQ calibrated on real training samples, as the pipeline calibrates."""
    return _teacher_in(bench, "int8")


def ptq_dynamic(bench: Bench) -> Built:
    """Dynamic-range PTQ: INT8 weights, float activations and I/O, no calibration."""
    return _teacher_in(bench, "dynamic")


def ptq_float16(bench: Bench) -> Built:
    """Float16 weights, float compute and I/O."""
    return _teacher_in(bench, "float16")


def ptq_int16x8(bench: Bench) -> Built:
    """INT16 activations, INT8 weights, int16 I/O, calibrated on real samples (slow on x86)."""
    return _teacher_in(bench, "int16x8")


def mixed(bench: Bench) -> Built:
    """The teacher in quantize.mode mixed: per op INT4/INT8 weights or float (AI Edge Quantizer),
    chosen on the validation split within quantize.max_accuracy_drop."""
    return _teacher_in(bench, "mixed")


def prune_ptq(bench: Bench) -> Built:
    """The tfmot guide: pruning 50 % -> 80 % over 2 fine-tuning epochs, strip, INT8 PTQ."""
    seed_everything(bench.params.seed)
    pruned = sparsify(bench.teacher, bench.data, GUIDE_PRUNING).model
    return Built(convert_to_tflite(pruned, "int8", _calibration(bench)), pruned.count_params())


def shrinkflow(bench: Bench) -> Built:
    """The pipeline with the configured params: its sparsify, distill and quantize stages."""
    _run_stages(COMPRESS_STAGES, bench.params, bench.ws)
    return Built(bench.ws.model.read_bytes(), read_model(bench.ws.student).count_params())


def qat(bench: Bench) -> Built:
    """shrinkflow's student after quantization-aware training on the distillation loss
    (quantize.qat_epochs, or BENCH_QAT_EPOCHS when that is 0), then INT8. Wall time: QAT and
    conversion only, on top of shrinkflow's."""
    cfg = bench.params.quantize.model_copy(
        update={"qat_epochs": bench.params.quantize.qat_epochs or BENCH_QAT_EPOCHS}
    )
    student = read_model(bench.ws.student)
    distill = bench.params.distill
    trained = quantization_aware_training(student, bench.teacher, bench.data, cfg, distill)
    return Built(convert_to_tflite(trained, "int8", _calibration(bench)), student.count_params())


def search(bench: Bench) -> Built:
    """The pipeline with search.enabled: the search chooses width, sparsity and mode on the
    validation split, then its sparsify, distill and quantize stages run with the choice."""
    ws = Workspace(bench.ws.root / "search")
    for source, target in ((bench.ws.data, ws.data), (bench.ws.teacher, ws.teacher)):
        copy_file(source, target)
    searching = bench.params.model_copy(
        update={"search": bench.params.search.model_copy(update={"enabled": True})})
    _run_stages(COMPRESS_STAGES, searching, ws)
    return Built(ws.model.read_bytes(), read_model(ws.student).count_params())


Recipe = Callable[[Bench], Built]
RECIPES: dict[str, Recipe] = {
    REFERENCE: fp32,
    "ptq-random-calib": ptq_random_calib,
    "ptq-int8": ptq_int8,
    "ptq-dynamic": ptq_dynamic,
    "ptq-float16": ptq_float16,
    "ptq-int16x8": ptq_int16x8,
    "mixed": mixed,
    "prune-ptq": prune_ptq,
    "shrinkflow": shrinkflow,
    "qat": qat,  # after shrinkflow: it starts from its student
    "search": search,
}


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
        _, load_s = timed(_run_stages, ["load"], params, ws)
        bench = Bench(params, ws, Dataset.load(ws.data), read_model(ws.teacher))
        recipes = measure_recipes(bench)
        document = {
            "params": params.model_dump(mode="json"),
            "config": str(params),
            "machine": machine_facts(),
            "test_samples": len(bench.data.test),
            "recipes": recipes,
        }
        if overhead:
            rest = [stage for stage in STAGES if stage != "load" and stage not in COMPRESS_STAGES]
            _, rest_s = timed(_run_stages, rest, params, ws)
            in_process_s = load_s + recipes["shrinkflow"]["wall_s"] + rest_s
            document["overhead"] = measure_overhead(params, root, in_process_s)
        paths = write_outputs(document, root)
        mlflow.log_metrics(bench_metrics(document))
        for path in paths:
            mlflow.log_artifact(str(path))
    return document


def measure_recipes(bench: Bench) -> dict[str, dict[str, float]]:
    """Build every recipe (timed), measure it with the pipeline's evaluator, compare it to fp32."""
    measured: dict[str, tuple[CandidateMetrics, float]] = {}
    for name, recipe in RECIPES.items():
        built, wall_s = timed(recipe, bench)
        metrics = evaluate_tflite(built.tflite, bench.data, bench.params.evaluate, built.params)
        measured[name] = metrics, wall_s
    reference = measured[REFERENCE][0]
    return {name: _row(reference, metrics, wall_s) for name, (metrics, wall_s) in measured.items()}


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
        "warm_all_skipped": "nothing re-ran" in warm_summary,  # flows.report.run_summary's words
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


def _run_stages(names: Iterable[str], params: Params, ws: Workspace) -> None:
    for name in names:
        run_stage(name, params, ws)


def _teacher_in(bench: Bench, mode: str) -> Built:
    """The teacher through the quantize stage's own conversion, in `mode`."""
    cfg = bench.params.quantize.model_copy(update={"enabled": True, "mode": mode})
    quantized = quantize_model(bench.teacher, cfg, _calibration(bench), bench.data.val)
    return Built(quantized.tflite, bench.teacher.count_params())


def _calibration(bench: Bench) -> np.ndarray:
    return calibration_samples(bench.data, bench.params.quantize, bench.params.seed)


def _row(reference: CandidateMetrics, metrics: CandidateMetrics, wall_s: float) -> dict[str, float]:
    """The evaluator's metrics, the headline ratios against `reference` (as metrics.json defines
    them for teacher vs final), and the recipe's wall time."""
    ratios = summarize({"teacher": reference, "final": metrics})
    return metrics.as_dict() | {key: ratios[key] for key in HEADLINE} | {"wall_s": wall_s}


def _table(document: dict) -> list[tuple[str, ...]]:
    """The header, then one row per recipe."""
    counts = thread_counts(next(iter(document["recipes"].values())))
    header = ("recipe", "accuracy", "vs fp32", ".tflite", "gzip", "compression",
              *(f"p50 / p90, {threads(n)}" for n in counts), "speedup", "memory", "wall time")
    return [header, *(
        (
            _label(name, document),
            percent(row["accuracy"]),
            f"{-100 * row['accuracy_drop'] or 0.0:+.2f} pt",  # `or`: -0.0 shows as +0.00
            human_size(row["tflite_bytes"]),
            human_size(row["gzip_bytes"]),
            f"{row['compression_ratio']:.1f}x",
            *(latency(row, n) for n in counts),
            f"{row['speedup']:.1f}x",
            memory(row["memory_bytes"]),
            f"{row['wall_s']:.1f} s",
        )
        for name, row in document["recipes"].items()
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
