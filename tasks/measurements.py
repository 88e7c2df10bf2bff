"""The typed record of a run's measurements: metrics.json as one frozen `RunMetrics`.

The evaluator writes it; the gate, the reports, the model card and the bench read its attributes.
`to_json` / `from_json` keep metrics.json's layout (DVC tracks it, users read it): each candidate
flat, its per-thread-count latencies beside its other figures (`latency_p50_us_4t`). What is
derived is written but never read back: top-level `teacher` (without `sparsity`) and `final`,
copies of `candidates`' own; the headline ratios; the paired drop and its bounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tasks.artifacts import write_json
from tasks.paired import PairedDrop
from tasks.profile import OpTime
from tasks.speed import Slowdown
from tasks.task import SCORES

PER_THREAD_COUNT = re.compile(r"latency_p(?:50|90)_us_(\d+)t")


def latency_keys(threads: int) -> tuple[str, str]:
    """The names of the batch-1 latency p50 and p90 at `threads` threads: `latency_p50_us_4t`,
    `latency_p90_us_4t`."""
    return f"latency_p50_us_{threads}t", f"latency_p90_us_{threads}t"


@dataclass(frozen=True)
class CandidateMetrics:
    accuracy: float
    params: int
    sparsity: float
    tflite_bytes: int
    gzip_bytes: int
    latency_p50_us: float  # batch 1 at evaluate.threads[0]: what `faster` and the speedup compare
    latency_p90_us: float
    memory_bytes: float  # heap the runtime holds: arena, packed weights (TFLiteClassifier)
    blocks_2_4: float  # share of 4-weight blocks with >= 2 zeros: the `2:4` pattern kept
    xnnpack: float  # 1.0: XNNPACK runs it; 0.0: XNNPACK refused it, LiteRT's built-in kernels do
    # latency_p50_us_4t, latency_p90_us_4t, ... for every count of evaluate.threads, where
    # measured (the evaluate stage and the bench; not search trials or the gate)
    per_thread_count: dict[str, float] = field(default_factory=dict)
    # the task's other scores beside `accuracy` (tasks/task.py SCORES: a multi-label model's
    # label_accuracy and macro_f1)
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, params: int, measured: Mapping[str, float]) -> CandidateMetrics:
        """What `measure_tflite` measured, with the parameter count of the Keras form."""
        return cls.from_dict({**measured, "params": params})

    @classmethod
    def from_dict(cls, flat: Mapping[str, float]) -> CandidateMetrics:
        """The `as_dict` form back; other keys beside it (a bench row's ratios) are left out."""
        named = {f.name for f in fields(cls)} - {"per_thread_count", "scores"}
        return cls(**{k: v for k, v in flat.items() if k in named},
                   per_thread_count={k: v for k, v in flat.items()
                                     if PER_THREAD_COUNT.fullmatch(k)},
                   scores={k: v for k, v in flat.items() if k in SCORES})

    def as_dict(self) -> dict[str, float]:
        """Flat: the per-thread-count figures and the task's other scores beside the others."""
        flat = asdict(self)
        per_thread_count, scores = flat.pop("per_thread_count"), flat.pop("scores")
        return flat | per_thread_count | scores

    def thread_counts(self) -> list[int]:
        """The interpreter thread counts its latency was measured at, in order."""
        return list(dict.fromkeys(int(match[1]) for key in self.per_thread_count
                                  if (match := PER_THREAD_COUNT.fullmatch(key))))

    def latency_at(self, threads: int) -> tuple[float, float]:
        """Batch-1 latency p50 and p90 in us at `threads` threads."""
        p50, p90 = (self.per_thread_count[key] for key in latency_keys(threads))
        return p50, p90


@dataclass(frozen=True)
class Comparison:
    """A candidate against a reference (metrics.json: final vs teacher; the bench: each recipe vs
    fp32): the headline ratios, the same keys in metrics.json, the bench and MLflow's metrics."""

    compression_ratio: float  # the reference's gzip bytes over the candidate's
    speedup: float  # the reference's latency p50 over the candidate's: below 1, slower
    accuracy_drop: float  # the point estimate: the reference's accuracy minus the candidate's

    @classmethod
    def of(cls, reference: CandidateMetrics, candidate: CandidateMetrics) -> Comparison:
        return cls(reference.gzip_bytes / candidate.gzip_bytes,
                   reference.latency_p50_us / candidate.latency_p50_us,
                   reference.accuracy - candidate.accuracy)

    @classmethod
    def from_dict(cls, flat: Mapping[str, float]) -> Comparison:
        """From a mapping that holds the three beside others: a bench row, a run's MLflow
        metrics."""
        return cls(**{f.name: flat[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def shown(self) -> dict[str, float]:
        """The three in the units and to the precision the headline says them (MLflow's metrics
        and the registry's tags): `compression_ratio` to 0.1, `speedup` to three digits, the
        drop in points to 0.01 (`accuracy_drop_pt`)."""
        return {"compression_ratio": round(self.compression_ratio, 1),
                "speedup": float(f"{self.speedup:.3g}"),
                "accuracy_drop_pt": round(100 * self.accuracy_drop, 2) + 0.0}  # never -0.0


@dataclass(frozen=True)
class Quantization:
    """The final model's quantization mode as the quantize stage recorded it (a recurrent model's
    `int8` being dynamic or float16), and how many weight layers it stores at each precision."""

    mode: str
    layer_precisions: dict[str, int]


@dataclass(frozen=True)
class FidelityCounts:
    """On how many of the unlabeled pool's certify part's `n` inputs the final model's class
    differs from the teacher's (bound at the gate's confidence: tasks/fidelity.py `Fidelity`)."""

    n: int
    disagree: int


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json: every candidate (`teacher` and `final` among them), the final model's paired
    drop vs the teacher at gate.confidence, its quantization, its slowdown vs the teacher timed
    interleaved (tasks/speed.py) bounded alike, its slowest ops (tasks/profile.py; none for a
    model too large to profile), and, with an unlabeled pool, its fidelity counts."""

    candidates: dict[str, CandidateMetrics]
    paired: PairedDrop
    quantization: Quantization
    slowdown: Slowdown
    slowest_ops: tuple[OpTime, ...]
    task: str  # what `accuracy` is: tasks/task.py TASKS
    fidelity: FidelityCounts | None = None

    @property
    def teacher(self) -> CandidateMetrics:
        return self.candidates["teacher"]

    @property
    def final(self) -> CandidateMetrics:
        return self.candidates["final"]

    @property
    def comparison(self) -> Comparison:
        """The final model vs the teacher: the headline."""
        return Comparison.of(self.teacher, self.final)

    @property
    def accuracy_drop_upper(self) -> float:
        """The paired upper bound beside the point estimate `comparison.accuracy_drop`."""
        return self.paired.upper

    def headline(self) -> dict[str, float]:
        """The flat metrics worth a chart in MLflow: the headline as it reads (`Comparison.shown`,
        and the drop's upper bound in points, `accuracy_drop_upper_pt`), each candidate's figures
        as measured."""
        flat = self.comparison.shown() | {
            "accuracy_drop_upper_pt": round(100 * self.accuracy_drop_upper, 2) + 0.0}
        for name, metrics in self.candidates.items():
            flat |= {f"{name}.{key}": value for key, value in metrics.as_dict().items()}
        fidelity = asdict(self.fidelity) if self.fidelity else {}
        return flat | {f"fidelity.{key}": value for key, value in fidelity.items()}

    def to_json(self) -> dict:
        """The metrics.json document."""
        teacher = self.teacher.as_dict()
        del teacher["sparsity"]
        return {
            "teacher": teacher,
            "final": self.final.as_dict(),
            "candidates": {name: metrics.as_dict() for name, metrics in self.candidates.items()},
            **self.comparison.as_dict(),
            "paired": self.paired.as_dict(),
            "accuracy_drop_upper": self.accuracy_drop_upper,
            "quantization": asdict(self.quantization),
            "slowdown": self.slowdown.as_dict(),
            "slowest_ops": [op.as_dict() for op in self.slowest_ops],
            "task": self.task,
        } | ({"fidelity": asdict(self.fidelity)} if self.fidelity else {})

    @classmethod
    def from_json(cls, document: dict) -> RunMetrics:
        """A metrics.json document read back (its derived figures recomputed, not read)."""
        paired, fidelity = document["paired"], document.get("fidelity")
        return cls(
            {name: CandidateMetrics.from_dict(flat)
             for name, flat in document["candidates"].items()},
            PairedDrop(**{f.name: paired[f.name] for f in fields(PairedDrop)}),
            Quantization(**document["quantization"]),
            Slowdown(**document["slowdown"]),
            tuple(OpTime(**op) for op in document["slowest_ops"]),
            document["task"],
            FidelityCounts(**fidelity) if fidelity else None,
        )

    def write(self, path: Path) -> None:
        """metrics.json at `path`, written atomically."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RunMetrics:
        return cls.from_json(json.loads(path.read_text()))


def percent(fraction: float) -> str:
    """`98.06 %`: a share (accuracy, sparsity) as a person reads it."""
    return f"{100 * fraction:.2f} %"


def human_size(size: int) -> str:
    """`9.3 KiB`: bytes (a .tflite, its gzip, the runtime's memory) as a person reads them."""
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024**2:.2f} MiB"
