"""Fidelity: evidence without labels. On inputs nobody labeled, the teacher's answer is the
reference: a student's accuracy drop there is at most the share of them on which it disagrees
with the teacher (its drop is P(teacher right, student wrong) - P(student right, teacher wrong),
and the first term alone is at most the disagreement). An exact upper confidence bound on that
rate (Clopper-Pearson, one-sided) within the budget certifies the drop on the distribution those
inputs come from, without a single label.

Numpy and the standard library only, as tasks/paired.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

BISECTION_STEPS = 60


@dataclass(frozen=True)
class Fidelity:
    """How often a candidate disagrees with the teacher on `n` unlabeled inputs."""

    n: int
    disagree: int
    confidence: float

    @property
    def rate(self) -> float:
        return self.disagree / self.n if self.n else 0.0

    @property
    def upper(self) -> float:
        """One-sided upper bound on the disagreement rate, hence on the drop, at `confidence`."""
        return disagreement_upper(self.disagree, self.n, self.confidence)

    def within(self, budget: float) -> bool:
        return self.upper <= budget

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"rate": self.rate, "upper": self.upper}

    def describe(self) -> str:
        """`disagrees with the teacher on 3 of 2,000 unlabeled inputs (0.15 %), drop <= 0.39 pt
        at 95 %`."""
        return (f"disagrees with the teacher on {self.disagree:,} of {self.n:,} unlabeled inputs "
                f"({100 * self.rate:.2f} %), drop <= {100 * self.upper:.2f} pt at "
                f"{100 * self.confidence:.4g} %")


def fidelity(teacher_classes: np.ndarray, candidate_classes: np.ndarray,
             confidence: float) -> Fidelity:
    """Count the inputs on which two vectors of predicted classes differ."""
    teacher, candidate = np.asarray(teacher_classes), np.asarray(candidate_classes)
    if teacher.shape != candidate.shape:
        raise ValueError(f"predictions differ in shape: {teacher.shape} vs {candidate.shape}")
    return Fidelity(int(teacher.size), int(np.sum(teacher != candidate)), confidence)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (n up to millions, k up to a few thousand)."""
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    i = np.arange(k + 1)
    log_pmf = (math.lgamma(n + 1) - _lgamma(i + 1) - _lgamma(n - i + 1)
               + i * math.log(p) + (n - i) * math.log1p(-p))
    return float(min(1.0, np.exp(log_pmf).sum()))


def disagreement_upper(disagree: int, n: int, confidence: float) -> float:
    """Clopper-Pearson's one-sided upper bound: the rate p at which seeing `disagree` or fewer of
    `n` has probability 1 - confidence. Exact: its coverage is at least `confidence` for every p."""
    if n == 0 or disagree >= n:
        return 1.0
    if disagree == 0:
        return 1 - (1 - confidence) ** (1 / n)
    low, high = disagree / n, 1.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if binomial_cdf(disagree, n, middle) > 1 - confidence \
            else (low, middle)
    return high


def inputs_to_certify(budget: float, confidence: float) -> int | None:
    """The fewest unlabeled inputs on which a candidate that never disagrees certifies `budget`
    (fewer can certify nothing); None for a zero budget."""
    if budget <= 0:
        return None
    if budget >= 1:
        return 1
    return math.ceil(math.log(1 - confidence) / math.log1p(-budget))


def _lgamma(values: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[float])(values)
