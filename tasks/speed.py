"""Is a model slower, or faster, than another beyond noise? The gate's speed floor
(`gate.max_slowdown`) and the search's ask it of the final model vs the teacher and vs the
champion; the gate's `faster` objective asks it of the new model vs the champion.

Two latencies measured minutes apart on a shared machine differ by tens of percent with nothing
changed (seen on this project's 2-core box). So the two models are timed in ROUNDS interleaved
rounds, in alternating order, on one interpreter each: whatever else the machine does slows both
alike within a round. Each round gives the ratio of their median invoke times; the slowdown is
the median of those ratios, with distribution-free bounds for it from their order statistics
(rounds are independent; nothing assumed about how timings are distributed). "Beyond noise" is
its lower bound, at the gate's confidence, above the limit by more than SAME_SPEED: the same
model timed against itself on two interpreters (one .tflite of 6 us, one of 78 us, ten times each,
2026-12-03) gave ratios from 0.981 to 1.002 on a quiet box, and 1.061 (bounds 1.006-1.073)
for a 9 us model beside the test suite's other worker, bounds that exclude 1 (each interpreter
has its own memory layout): differences that small are no evidence either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tasks.config import EvaluateConfig
from tasks.tflite import TFLiteClassifier

ROUNDS = 20  # at 95 %: the bounds are the 6th and 15th of the 20 sorted ratios
SAME_SPEED = 0.10  # bounds within 10 % of the limit are no evidence either way (see above)


@dataclass(frozen=True)
class Slowdown:
    """How many times a model's batch-1 latency is a reference's: `ratio` (1.0: as fast,
    2.0: twice as slow), bounded by `lower` and `upper` at `confidence` each (one-sided)."""

    ratio: float
    lower: float
    upper: float
    model_us: float  # the median invoke of each over every round
    reference_us: float
    rounds: int
    confidence: float
    threads: int

    def excess(self, limit: float) -> float:
        """How far the lower bound lies above `limit` times the reference, and SAME_SPEED: above
        0, the model is slower than that beyond noise."""
        return self.lower - limit * (1 + SAME_SPEED)

    def beyond(self, limit: float) -> bool:
        """Slower than `limit` times the reference beyond noise."""
        return self.excess(limit) > 0

    def faster(self) -> bool:
        """Faster than the reference beyond noise: the upper bound below it by SAME_SPEED."""
        return self.upper * (1 + SAME_SPEED) < 1

    def describe(self, reference: str) -> str:
        """`latency 3.2 vs the teacher's 119.0 us: 37.0x faster (between 35.1x and 38.5x faster
        at 95 %, 1 thread, 20 interleaved rounds)`: the ratio and its bounds said as a speed, as
        the reports say the teacher-to-final speedup (`speed_change`)."""
        (worst, worse), (best, better) = _speed(1 / self.upper), _speed(_inverse(self.lower))
        between = (f"{best} and {worst} {worse}" if worse == better == SLOWER else
                   f"{worst} and {best} {better}" if worse == better else
                   f"{worst} {worse} and {best} {better}")
        return (f"latency {self.model_us:.1f} vs {reference}'s {self.reference_us:.1f} us: "
                f"{speed_change(_inverse(self.ratio))} (between {between} at "
                f"{100 * self.confidence:.4g} %, {self.threads} thread"
                f"{'s' if self.threads > 1 else ''}, {self.rounds} interleaved rounds)")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


SLOWER = "SLOWER"  # in capitals: a slower model stands out wherever its speed is said


def speed_change(speedup: float) -> str:
    """`37.0x faster` or `2.6x SLOWER` for a `speedup` (a reference's latency over the model's):
    a slower model is said in words, not as `0.4x faster`."""
    return " ".join(_speed(speedup))


def _speed(speedup: float) -> tuple[str, str]:
    """`("37.0x", "faster")`, `("1.06x", "SLOWER")`: three digits (two decimals below 10x,
    where the gate's noise, SAME_SPEED, and its limits lie)."""
    factor, word = (speedup, "faster") if speedup >= 1 else (_inverse(speedup), SLOWER)
    return f"{factor:.2f}x" if factor < 10 else f"{factor:.1f}x", word


def _inverse(value: float) -> float:
    """1 / `value`; a bound of 0 (too few rounds to bound it) is an unbounded speed."""
    return 1 / value if value else math.inf


def slowdown(model: bytes, reference: bytes, sample: np.ndarray, cfg: EvaluateConfig,
             confidence: float) -> Slowdown:
    """`model`'s latency over `reference`'s on `sample`, at the deployment's thread count
    (`cfg.threads[0]`), from `cfg.latency_runs` invokes of each in ROUNDS interleaved rounds
    after `cfg.warmup_runs` untimed ones."""
    threads = cfg.threads[0]
    timers = [TFLiteClassifier(tflite, threads).invoke_timer(sample) for tflite in (model, reference)]
    for time_invokes in timers:
        time_invokes(cfg.warmup_runs)
    per_round = max(1, cfg.latency_runs // ROUNDS)
    timings: list[list[np.ndarray]] = [[], []]
    for round_ in range(ROUNDS):
        for which in (0, 1) if round_ % 2 == 0 else (1, 0):
            timings[which].append(timers[which](per_round))
    ratios = np.sort([np.median(m) / np.median(r) for m, r in zip(*timings)])
    k = order_statistic_bound(ROUNDS, confidence)
    return Slowdown(float(np.median(ratios)),
                    float(ratios[k - 1]) if k else 0.0, float(ratios[-k]) if k else float("inf"),
                    *(float(np.median(np.concatenate(t))) / 1000.0 for t in timings),
                    ROUNDS, confidence, threads)


def order_statistic_bound(n: int, confidence: float) -> int:
    """The largest k such that the k-th smallest of `n` independent values lies below their
    median with probability at least `confidence` (the k-th largest above it, alike): fewer
    than k of them below it has probability P(Binomial(n, 1/2) < k) <= 1 - confidence. 0 when
    `n` values cannot bound it so (too few)."""
    k, below = 0, 0.0
    while k < n and (below := below + math.comb(n, k) / 2**n) <= 1 - confidence:
        k += 1
    return k
