"""Fidelity: evidence without labels. On inputs nobody labeled, the teacher's answer is the
reference: a student's accuracy drop there is at most the share of them on which it disagrees
with the teacher (its drop is P(teacher right, student wrong) - P(student right, teacher wrong),
and the first term alone is at most the disagreement). An exact upper confidence bound on that
rate (Clopper-Pearson, one-sided) within the budget certifies the drop on the distribution those
inputs come from, without a single label.

SciPy's beta and binomial distributions do the arithmetic (scikit-learn's dependency, already
installed; imported only here and in tasks/power.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta


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


def fidelity(teacher_answers: np.ndarray, candidate_answers: np.ndarray,
             confidence: float) -> Fidelity:
    """Count the inputs on which two models' answers (tasks/task.py: classes, or rows of labels
    that differ in any label) differ."""
    teacher, candidate = np.asarray(teacher_answers), np.asarray(candidate_answers)
    if teacher.shape != candidate.shape:
        raise ValueError(f"predictions differ in shape: {teacher.shape} vs {candidate.shape}")
    n = len(teacher)
    differ = np.any((teacher != candidate).reshape(n, -1), axis=1)
    return Fidelity(n, int(np.sum(differ)), confidence)


def disagreement_upper(disagree: int, n: int, confidence: float) -> float:
    """Clopper-Pearson's one-sided upper bound: the rate p at which seeing `disagree` or fewer of
    `n` has probability 1 - confidence (the `confidence` quantile of Beta(k + 1, n - k)). Exact:
    its coverage is at least `confidence` for every p."""
    if n == 0 or disagree >= n:
        return 1.0
    return float(beta.ppf(confidence, disagree + 1, n - disagree))


def inputs_to_certify(budget: float, confidence: float) -> int | None:
    """The fewest unlabeled inputs on which a candidate that never disagrees certifies `budget`
    (fewer can certify nothing); None for a zero budget."""
    if budget <= 0:
        return None
    if budget >= 1:
        return 1
    return math.ceil(math.log(1 - confidence) / math.log1p(-budget))
