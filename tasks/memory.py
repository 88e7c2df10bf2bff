"""A teacher's memory of the validation split: whether a teacher given as a file was trained on the
samples it is about to be validated on, judged from its answers alone before any student trains
(tasks/load.py `memorized`, data.val_from auto). A paired comparison on samples the teacher
remembers makes every student look worse than it is.

Two signs of memory, one rule (`Memory`): the teacher is more accurate on the validation samples
than on the test split's (`AccuracyGap`, labels needed), or fewer of them are among its least
sure answers than of the inputs it never saw, the test split's and the unlabeled pool's
(`ConfidenceGap`, no labels needed). Each is tested one-sided at half the error (Bonferroni), so
the rule keeps its false alarm rate. Simulated (tests/test_memory.py; figures in docs/data.md):
a digits teacher trained long is found from 100 validation samples by its confidence, where its
accuracy gap says nothing in 97 % of draws; one trained briefly is as sure of unseen samples as
of seen ones but errs more on them, which only the accuracy gap sees.

Gotchas: both compare the validation samples with held-out ones as if drawn alike, which holds
for a random split only. A teacher simply better on the kind of samples validation holds (a
test split collected later or elsewhere, or a pool of the day's traffic it is less sure of)
looks like one that remembers: the rule fires, which costs test samples, never correctness.
The confidence test cannot fire on fewer than ~55 validation samples: even none of them among the
least sure tenth has p near e^(-n/10), above the rule's 0.005.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import nhypergeom, norm

LEAST_SURE = 0.1  # the least sure tenth of the held-out answers, where memory shows


@dataclass(frozen=True)
class AccuracyGap:
    """The teacher's right answers on the validation and test splits, and the one-sided
    two-proportion z-test that it is more accurate on validation."""

    validation_right: int
    validation: int
    test_right: int
    test: int

    @property
    def p_value(self) -> float:
        pooled = (self.validation_right + self.test_right) / (self.validation + self.test)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / self.validation + 1 / self.test))
        gap = self.validation_right / self.validation - self.test_right / self.test
        return 1.0 if spread == 0 else float(norm.cdf(-gap / spread))

    def describe(self) -> str:
        validation, test = (100 * right / n for right, n in (
            (self.validation_right, self.validation), (self.test_right, self.test)))
        return (f"scores {validation:.2f} % on the {self.validation:,} validation samples and "
                f"{test:.2f} % on the {self.test:,} test samples ({_p(self.p_value)})")


@dataclass(frozen=True)
class ConfidenceGap:
    """How many of the validation samples the teacher answers as unsurely as the least sure
    LEAST_SURE of the inputs it never saw (`held_out`, `unlabeled` of them from the pool): with
    `margins` at or below `threshold`, the k-th least sure of those (k: LEAST_SURE of them); and
    how many it would be if it had never seen them either (`expected`, `p_value`:
    `confidence_gap`)."""

    validation: int
    held_out: int
    unlabeled: int
    threshold: float
    below: int
    expected: float
    p_value: float

    def describe(self) -> str:
        pool = f", {self.unlabeled:,} of them unlabeled" if self.unlabeled else ""
        return (f"answers them {'more' if self.below < self.expected else 'no more'} surely than "
                f"the {self.held_out:,} inputs it never saw{pool}: {self.below:,} of the "
                f"{self.validation:,} ({100 * self.below / self.validation:.1f} %) as unsurely as "
                f"the least sure {100 * LEAST_SURE:.0f} % of those (margin {self.threshold:.2g} "
                f"or less; {self.expected:.0f} expected, {_p(self.p_value)})")


def confidence_gap(validation: np.ndarray, held_out: np.ndarray, unlabeled: int = 0
                   ) -> ConfidenceGap:
    """`ConfidenceGap` of the margins (tasks/task.py `Task.margins`) on the validation samples and on held-out inputs, with an
    exact one-sided rank test: were the validation samples unseen too, every order of all the
    margins would be as likely, and the number of validation samples before the k-th held-out
    one is negative hypergeometric; memory leaves few there. Ties with the threshold count as
    below (conservative).

    Gotcha: only the least sure tail tells. Mann-Whitney, which weighs every rank alike, missed a
    digits teacher that remembered every training sample (tests/test_memory.py): it was as sure
    of most digits it never saw as of the ones it saw."""
    k = max(1, math.ceil(LEAST_SURE * len(held_out)))
    threshold = float(np.partition(held_out, k - 1)[k - 1])
    below = int(np.sum(validation <= threshold))
    unseen = nhypergeom(len(validation) + len(held_out), len(validation), k)
    return ConfidenceGap(len(validation), len(held_out), unlabeled, threshold, below,
                         float(unseen.mean()), float(unseen.cdf(below)))


@dataclass(frozen=True)
class Memory:
    """Both signs of the teacher's memory of the validation split; the rule: the smaller p,
    doubled (Bonferroni), below 1 - confidence."""

    accuracy: AccuracyGap
    confidence: ConfidenceGap

    @property
    def p_value(self) -> float:
        return min(1.0, 2 * min(self.accuracy.p_value, self.confidence.p_value))

    def remembered(self, confidence: float) -> bool:
        return self.p_value < 1 - confidence

    def describe(self) -> str:
        return f"the teacher {self.accuracy.describe()}, and {self.confidence.describe()}"


def _p(p_value: float) -> str:
    return f"p = {p_value:.1g}" if p_value > 1e-300 else "p < 1e-300"
