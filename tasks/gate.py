"""The promotion gate: does a new model deserve the `champion` alias? Pure logic, no registry.

Its accuracy rule is `gate.require`: `certified` (an upper confidence bound within the budget,
on the test labels or on the disagreement with the teacher over unlabeled inputs), `estimate`
(the paired point estimate within it), or `auto`, which picks one per run before any training,
from the test split's size and the teacher's errors on it (`decide_rule`): `certified` when a
student as accurate as the teacher would be certified with probability 0.8 (tasks/power.py).
A promotion on the estimate alone says so wherever the model is seen.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from tasks.config import GateConfig
from tasks.fidelity import Fidelity
from tasks.measurements import RunMetrics, human_size, percent
from tasks.paired import TOLERANCE, PairedDrop
from tasks.power import (
    POWER,
    GateRule,
    certifiable_drop,
    pool_to_certify,
    power,
    samples_to_certify,
)
from tasks.speed import Slowdown
from tasks.splits import Dataset

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
POOL_SHOWN = 100_000  # a pool size worth suggesting (a student closer to the teacher needs fewer)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class RuleChoice:
    """The accuracy rule a run's gate applies, and why: decided once the test split and the
    teacher's errors on it are known, before any training."""

    rule: GateRule
    teacher_error: float  # on the test split
    power: float  # a student as accurate as the teacher is certified with this probability
    certifiable: float  # the budget this split certifies with probability POWER

    @property
    def certifies(self) -> bool:
        return self.power >= POWER

    def describe(self, cfg: GateConfig) -> str:
        """What the gate will demand, with the numbers behind `auto`'s choice and the fixes."""
        rule, budget = self.rule, f"{100 * self.rule.budget:.2f} pt"
        pool = f" and {rule.pool:,} unlabeled inputs" if rule.pool else ""
        odds = (f"{rule.n:,} test samples{pool} certify a {budget} drop for a student as accurate "
                f"as the teacher (wrong on {100 * self.teacher_error:.2f} % of them) with "
                f"probability {self.power:.2f}")
        if cfg.require != "auto":
            return f"gate.require {cfg.require}: {odds}"
        if self.certifies:
            return f"gate.require auto -> certified: {odds} (>= {POWER})"
        needed = samples_to_certify(rule, self.teacher_error)
        inputs = pool_to_certify(rule, self.teacher_error)
        return (f"gate.require auto -> estimate: {odds} (< {POWER}); they certify "
                f"{100 * self.certifiable:.2f} pt. Promotions are decided on the point estimate "
                f"within {budget} and marked uncertified. To certify, use more test samples"
                + (f" ({needed:,} would)" if needed else "")
                + " (data.test_fraction, or x_test in the npz), set data.unlabeled"
                + (f" ({inputs:,} inputs would)" if inputs and inputs <= POOL_SHOWN else "")
                + ", or set gate.require: certified to refuse what is not certified")


@dataclass(frozen=True)
class Evidence:
    """The final model vs the teacher, as the gate weighs it: its accuracy drop, paired on the
    test labels and, with an unlabeled pool, its disagreement with the teacher there (each bound
    at the rule's `bound_confidence`); and its slowdown (tasks/speed.py)."""

    choice: RuleChoice
    labels: PairedDrop
    slowdown: Slowdown
    fidelity: Fidelity | None = None

    @property
    def certified(self) -> bool:
        budget = self.choice.rule.budget
        return self.labels.within(budget) or bool(self.fidelity and self.fidelity.within(budget))

    @property
    def passes(self) -> bool:
        return self.certified or (self.choice.rule.require == "estimate"
                                  and self.labels.drop <= self.choice.rule.budget + TOLERANCE)

    def describe(self) -> str:
        """`certified: accuracy drop +0.28 pt, upper bound 0.90 pt ...` or `uncertified: ...`."""
        found = self.labels.describe() + (f"; {self.fidelity.describe()}" if self.fidelity else "")
        if self.certified:
            return f"certified: {found}"
        return (f"uncertified: {found}; this test split certifies "
                f"{100 * self.choice.certifiable:.2f} pt")

    def tags(self) -> dict[str, str]:
        """What the registry, the run and the report show of it."""
        return {"gate.require": self.choice.rule.require,
                "gate.certified": str(self.certified).lower(),
                "gate.certifiable_drop": f"{self.choice.certifiable:.4f}",
                "gate.evidence": self.describe()}


def decide_rule(cfg: GateConfig, test_samples: int, teacher_errors: int,
                pool: int = 0) -> RuleChoice:
    """`gate.require` resolved for a test split of `test_samples` on which the teacher is wrong
    `teacher_errors` times, with `pool` unlabeled inputs to certify on."""
    return _decided(cfg.require, cfg.max_accuracy_drop, cfg.confidence, test_samples,
                    teacher_errors, pool)


@functools.lru_cache(maxsize=16)
def _decided(require: str, budget: float, confidence: float, n: int, errors: int,
             pool: int) -> RuleChoice:
    error = errors / n if n else 0.0
    certified = GateRule("certified", budget, confidence, n, pool)
    chance = power(certified, error)
    if require == "auto":
        require = "certified" if chance >= POWER else "estimate"
    return RuleChoice(replace(certified, require=require), error, chance,
                      certifiable_drop(certified, error))


def rule_for(cfg: GateConfig, data: Dataset) -> RuleChoice:
    """The rule for this run's data: its test split, the teacher's errors on it (measured by the
    load stage) and its unlabeled pool's certify part."""
    return decide_rule(cfg, len(data.test), data.teacher_errors["test"],
                       len(data.pool.certify) if data.pool else 0)


def weigh(cfg: GateConfig, data: Dataset, metrics: RunMetrics) -> Evidence:
    """The gate's evidence on the final model: metrics.json's paired counts vs the teacher on the
    test split (and fidelity counts on the pool), each bound at the rule's confidence (not the
    one metrics.json records them at), and its slowdown vs the teacher."""
    choice = rule_for(cfg, data)
    confidence = choice.rule.bound_confidence
    counts = metrics.fidelity
    return Evidence(choice, replace(metrics.paired, confidence=confidence), metrics.slowdown,
                    counts and Fidelity(counts.n, counts.disagree, confidence))


def announce_rule(choice: RuleChoice, cfg: GateConfig) -> None:
    """Say at the start of a run what its gate will demand: a warning when it cannot certify."""
    (log.info if choice.certifies else log.warning)("gate: %s", choice.describe(cfg))


@dataclass(frozen=True)
class Interface:
    """What a classifier is for: the shape of one input sample and its number of classes."""

    input_shape: tuple[int, ...]
    num_classes: int

    def __str__(self) -> str:
        return f"inputs {self.input_shape} / {self.num_classes} classes"


def not_comparable(cfg: GateConfig, champion: Interface, candidate: Interface) -> Decision | None:
    """A refusal when the champion was made for another task than the new model (its accuracy on
    this run's data would mean nothing); None when the two can be measured side by side."""
    if champion == candidate:
        return None
    name = cfg.registered_model
    return Decision(False, f"the champion of gate.registered_model {name!r} takes {champion}, "
                           f"this run's model {candidate}: not comparable; use a registered model "
                           f"name per task, e.g. --set gate.registered_model={name}-<task>")


def judge(cfg: GateConfig, candidate: dict, evidence: Evidence, champion: dict | None,
          champion_drop: PairedDrop | None, champion_slowdown: Slowdown | None) -> Decision:
    """`candidate` and `champion` hold the evaluator's accuracy, gzip_bytes and latency_p50_us,
    measured on the same test split; `evidence` is the candidate vs the teacher,
    `champion_drop` its paired drop vs the champion (reference: the champion) on it and
    `champion_slowdown` its latency over the champion's, timed interleaved.

    The rules, in order (bounds at cfg.confidence, tasks/paired.py, tasks/speed.py):
    - the accuracy rule (`evidence.passes`): certified within gate.max_accuracy_drop, or under
      `estimate` its point estimate within it;
    - the speed floor: not slower than the teacher, nor than the champion, by more than
      gate.max_slowdown beyond noise (a slowdown beyond noise within it is promoted, said so);
    - the champion must not be more accurate beyond noise: the lower bound of `champion_drop`
      above 0 refuses; a difference within noise is no reason to keep the champion;
    - then the objective: smaller gzip; or lower latency beyond noise (`champion_slowdown`'s
      upper bound below 1 by SAME_SPEED: p50s measured apart differ by more than that); or, for
      more_accurate, a higher accuracy (point estimate; it implies the above, as the lower bound
      never exceeds the estimate), ties broken by the smaller gzip.
    """
    budget = f"gate.max_accuracy_drop {100 * cfg.max_accuracy_drop:.2f} pt"
    if not evidence.passes:
        fix = "" if evidence.choice.rule.require == "estimate" else (
            f"; {evidence.choice.describe(cfg)}" if not evidence.choice.certifies else "")
        return Decision(False, f"{evidence.describe()}: over {budget}{fix}")
    slowdowns = {"the teacher": evidence.slowdown, "the champion": champion_slowdown}
    slowdowns = {who: slowdown for who, slowdown in slowdowns.items() if slowdown}
    limit = f"gate.max_slowdown {cfg.max_slowdown:g}x"
    for who, slowdown in slowdowns.items():
        if slowdown.beyond(cfg.max_slowdown):
            return Decision(False, f"{_slower(slowdown, who)}: over {limit} (raise it where "
                                   f"only bytes count)")
    within = f"{evidence.describe()}: within {budget}" + "".join(
        f"; {_slower(slowdown, who)}: within {limit}"
        for who, slowdown in slowdowns.items() if slowdown.beyond(1.0))
    if champion is None:
        return Decision(True, f"first model within the accuracy gate ({within})")
    if champion_drop.lower > 0:
        return Decision(False, f"accuracy {100 * candidate['accuracy']:.2f} % is below the "
                               f"champion's {100 * champion['accuracy']:.2f} % beyond noise: "
                               f"{champion_drop.describe(bound='lower')}")
    if cfg.objective == "more_accurate":
        better = candidate["accuracy"] > champion["accuracy"] or (
            candidate["accuracy"] == champion["accuracy"]
            and candidate["gzip_bytes"] < champion["gzip_bytes"]
        )
        return _verdict(better, "accuracy", candidate, champion, within)
    if cfg.objective == "faster":
        return _faster(champion_slowdown, within)
    return _verdict(candidate["gzip_bytes"] < champion["gzip_bytes"], "gzip_bytes", candidate,
                    champion, within)


def _faster(slowdown: Slowdown, within: str) -> Decision:
    timed = slowdown.describe("the champion")
    if slowdown.faster():
        return Decision(True, f"beats the champion: {timed} ({within})")
    return Decision(False, f"does not beat the champion: not faster beyond noise: {timed}")


def _slower(slowdown: Slowdown, reference: str) -> str:
    return f"slower than {reference} beyond noise: {slowdown.describe(reference)}"


def _gzip(size: float) -> str:
    return human_size(int(size))


# A figure the objective compares, as a reason says it: its name, the figure as a person reads it,
# and exactly (when the two read the same, `9.3 KiB vs the champion's 9.3 KiB`).
FIGURES: dict[str, tuple[str, Callable[[float], str], Callable[[float], str]]] = {
    "accuracy": ("accuracy", percent, lambda value: f"{100 * value:.4f} %"),
    "gzip_bytes": ("gzip", _gzip, lambda size: f"{int(size):,} B"),
}


def _verdict(better: bool, key: str, candidate: dict, champion: dict, within: str) -> Decision:
    """`beats the champion: gzip 9.3 KiB vs the champion's 16.2 KiB (...)`."""
    name, shown, exact = FIGURES[key]
    if shown(candidate[key]) == shown(champion[key]):
        shown = exact
    comparison = f"{name} {shown(candidate[key])} vs the champion's {shown(champion[key])}"
    return Decision(better, f"beats the champion: {comparison} ({within})" if better
                    else f"does not beat the champion: {comparison}")
