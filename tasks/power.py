"""How likely the gate is to pass: the power of a test split before any training, and a measured
candidate's chance of passing on the test split, from what it showed on validation.

Two accuracy rules (gate.require): `certified` passes when the paired drop's upper bound is
within the budget (or, with an unlabeled pool, the disagreement rate's, tasks/fidelity.py);
`estimate` when the point estimate is. For `n` test samples with `D` of them discordant, a rule
passes exactly when `worse` is at most a threshold (the bound grows with `worse` at fixed `D`),
so every probability here is a sum over `D` of binomial terms: exact for the power, and, for a
candidate, averaged over its validation counts' posterior (Jeffreys' prior), which carries how
little a few hundred validation samples know into the chance of passing.

"A student as accurate as the teacher" (the power's model) disagrees with it on a share of the
test samples equal to half the teacher's error rate, as often worse as better: distilled students
share most of the teacher's errors (the built-in default's, 2026-12-02: 4 discordant samples of
360, the teacher wrong on 8).

SciPy's binomial distribution does the sums (as in tasks/fidelity.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from scipy.stats import binom

from tasks.fidelity import disagreement_upper
from tasks.paired import TOLERANCE, upper_bound

Rule = Literal["certified", "estimate"]
POWER = 0.8  # the conventional power of a study: certify when the split gives a fair student 80 %
# Choosing asks for the odds of passing the gate, not for its certainty (the gate, on the whole
# test split, certifies or not). The search's sampler and distill.width auto keep a candidate
# more likely than not to pass; the search's chosen trial must also be CONFIRMED from the
# confirmation part, which no choice saw: tried in order of size, refused trials give the next
# ones more chances, and a simulation (docs/search.md) put the chosen trial's true chance of
# passing at 0.42 (digits' 72-sample parts) and 0.75 (400) with 0.8 there, 0.36 and 0.48 with 0.5.
LIKELY = 0.5
CONFIRMED = 0.8
DISAGREEMENT = 0.5  # a fair student's disagreement with the teacher, per teacher error
SPREAD = 8  # discordant counts beyond mean +- 8 sd have negligible probability (< 1e-15)
DRAWS = 4000  # posterior draws per candidate: the chance of passing to within +-0.008
MAX_SAMPLES = 10**6
BUDGET_STEPS = 14  # bisection of the certifiable drop: to 0.006 pt


@dataclass(frozen=True)
class GateRule:
    """What the gate will demand: `require` within `budget` at `confidence`, on `n` paired test
    samples and, when an unlabeled pool is set, `pool` inputs of its certify part."""

    require: Rule
    budget: float
    confidence: float
    n: int
    pool: int = 0

    @property
    def bound_confidence(self) -> float:
        """Each bound's confidence: with two ways to certify (labels, fidelity), each gets half
        the error (Bonferroni), so certifying by either keeps `confidence`."""
        return 1 - (1 - self.confidence) / 2 if self.pool else self.confidence


def worst_passing(rule: GateRule, discordant: int) -> int:
    """The most `worse` samples of `discordant` with which the labels rule passes (-1: none)."""
    return int(_thresholds(rule.require, rule.budget, rule.bound_confidence, rule.n,
                           discordant + 1)[discordant])


def pass_probability(rule: GateRule, p_worse: float, p_better: float) -> float:
    """P(the labels rule passes) when each test sample is independently worse with probability
    `p_worse` and better with `p_better`: exact, summed over the discordant count."""
    p = p_worse + p_better
    if p <= 0:
        return float(worst_passing(rule, 0) >= 0)
    low, high = _window(rule.n, p)
    thresholds = _thresholds(rule.require, rule.budget, rule.bound_confidence, rule.n, high + 1)
    discordant = np.arange(low, high + 1)
    return float(np.sum(binom.pmf(discordant, rule.n, p)
                        * binom.cdf(thresholds[low:], discordant, p_worse / p)))


def fidelity_pass_probability(rule: GateRule, rate: float) -> float:
    """P(the fidelity bound on the pool's certify part is within budget) at disagreement `rate`."""
    return float(binom.cdf(most_disagreements(rule), rule.pool, rate))


def most_disagreements(rule: GateRule) -> int:
    """The most disagreements of `rule.pool` inputs that still certify the budget (-1: none)."""
    return _most_disagreements(rule.pool, rule.budget, rule.bound_confidence)


def power(rule: GateRule, teacher_error: float) -> float:
    """The chance that a student as accurate as the teacher is certified (labels or fidelity)."""
    disagreement = DISAGREEMENT * teacher_error
    labels = pass_probability(rule, disagreement / 2, disagreement / 2)
    return max(labels, fidelity_pass_probability(rule, disagreement)) if rule.pool else labels


def chance_to_pass(rule: GateRule, worse: int, better: int, n: int, seed: int = 0) -> float:
    """A candidate's chance of passing the labels rule on the test split, from its paired counts
    on `n` validation samples: the pass probability averaged over the posterior of its rates
    (Dirichlet(worse + 1/2, better + 1/2, rest + 1/2)). Seeded: the same counts, the same answer."""
    rng = np.random.default_rng(seed)
    rates = rng.dirichlet([worse + 0.5, better + 0.5, n - worse - better + 0.5], DRAWS)
    counts = rng.multinomial(rule.n, rates)
    discordant = counts[:, 0] + counts[:, 1]
    thresholds = _thresholds(rule.require, rule.budget, rule.bound_confidence, rule.n,
                             int(discordant.max()) + 1)
    return float(np.mean(counts[:, 0] <= thresholds[discordant]))


def chance_to_certify(rule: GateRule, disagree: int, n: int, seed: int = 0) -> float:
    """A candidate's chance of being certified by fidelity on the pool's certify part, from its
    disagreements with the teacher on `n` inputs of the choose part (posterior Beta(k+1/2,
    n-k+1/2))."""
    if not rule.pool or not n:  # an empty choose part shows nothing
        return 0.0
    rng = np.random.default_rng(seed)
    rates = rng.beta(disagree + 0.5, n - disagree + 0.5, DRAWS)
    return float(np.mean(rng.binomial(rule.pool, rates) <= most_disagreements(rule)))


def certifiable_drop(rule: GateRule, teacher_error: float) -> float:
    """The smallest budget this split certifies with probability POWER for a student as accurate
    as the teacher (bisection: the power grows with the budget)."""
    low, high = 0.0, 1.0
    for _ in range(BUDGET_STEPS):
        middle = (low + high) / 2
        certify = GateRule("certified", middle, rule.confidence, rule.n, rule.pool)
        low, high = (low, middle) if power(certify, teacher_error) >= POWER else (middle, high)
    return high


def samples_to_certify(rule: GateRule, teacher_error: float) -> int | None:
    """The fewest labeled test samples with which a student as accurate as the teacher is
    certified with probability POWER (no pool); None when no number below MAX_SAMPLES does
    (none certifies a zero budget)."""
    if rule.budget <= 0:
        return None
    return _fewest(lambda n: power(GateRule("certified", rule.budget, rule.confidence, n),
                                   teacher_error), rule.n)


def pool_to_certify(rule: GateRule, teacher_error: float) -> int | None:
    """The fewest unlabeled inputs in the pool's certify part with which a student as accurate as
    the teacher is certified by fidelity alone with probability POWER; None when its disagreement
    rate is above the budget (no pool certifies that)."""
    if rule.budget <= 0 or DISAGREEMENT * teacher_error >= rule.budget:
        return None
    return _fewest(lambda m: fidelity_pass_probability(
        GateRule("certified", rule.budget, rule.confidence, rule.n, m),
        DISAGREEMENT * teacher_error), rule.pool)


def _fewest(power_at: Callable[[int], float], start: int) -> int | None:
    """The smallest size at which `power_at` reaches POWER, to within 1 % (doubling, then
    bisection: the power grows with the size, up to the discreteness of the counts)."""
    high = max(start, 16)
    while power_at(high) < POWER:
        if high >= MAX_SAMPLES:
            return None
        high *= 2
    low = high // 2
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        low, high = (low, middle) if power_at(middle) >= POWER else (middle, high)
    return high


@functools.lru_cache(maxsize=64)
def _thresholds(require: Rule, budget: float, confidence: float, n: int,
                size: int) -> np.ndarray:
    """For each discordant count D < size, the most `worse` with which the rule passes (-1: none).
    At fixed D the bound grows with `worse`, and the threshold moves little from one D to the
    next: each is found by stepping from the one before."""
    if require == "estimate":  # worse - better <= budget * n, better = D - worse
        d = np.arange(size)
        return np.minimum(d, np.floor((d + budget * n) / 2 + TOLERANCE)).astype(np.int64)

    def passes(worse: int, d: int) -> bool:
        return upper_bound(worse, d - worse, n, confidence) <= budget + TOLERANCE

    thresholds = np.empty(size, np.int64)
    worse = 0
    for d in range(size):
        worse = min(max(worse, 0), d)
        if passes(worse, d):
            while worse < d and passes(worse + 1, d):
                worse += 1
        else:
            while worse >= 0 and not passes(worse, d):
                worse -= 1
        thresholds[d] = worse
    return thresholds


@functools.lru_cache(maxsize=64)
def _most_disagreements(n: int, budget: float, confidence: float) -> int:
    if disagreement_upper(0, n, confidence) > budget:
        return -1
    low, high = 0, n  # disagreement_upper(low) <= budget < disagreement_upper(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if disagreement_upper(middle, n, confidence) <= budget \
            else (low, middle)
    return low


def _window(n: int, p: float) -> tuple[int, int]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return max(0, math.floor(mean - SPREAD * sd) - 1), min(n, math.ceil(mean + SPREAD * sd) + 1)
