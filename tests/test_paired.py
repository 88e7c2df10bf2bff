"""The paired bound does what the gate relies on: a model worse than the budget is certified at
most (1 - confidence) of the time, a model as good as its reference is certified once the sample is
large enough, and no sample certifies less than its smallest certifiable drop."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from tasks.paired import PairedDrop, paired_drop, upper_bound

CONFIDENCE = 0.95
BUDGET = 0.01
DRAWS = 4000
TOLERANCE = 0.01  # about 3 Monte-Carlo standard errors of a 5 % rate over DRAWS


def pool(size: int, worse: int, better: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness of a reference and a candidate on a large pool: exactly `worse`
    samples only the reference gets right, `better` only the candidate, the rest agree."""
    reference = np.random.default_rng(seed).random(size) < 0.9
    candidate = reference.copy()
    only_reference, only_candidate = worse, worse + better
    reference[:only_candidate], candidate[:only_candidate] = True, False
    reference[only_reference:only_candidate], candidate[only_reference:only_candidate] = False, True
    return reference, candidate


def acceptance_rate(reference: np.ndarray, candidate: np.ndarray, n: int, seed: int) -> float:
    """How often `n` samples drawn from the pool certify BUDGET; the bound is computed once per
    distinct (worse, better) count."""
    picks = np.random.default_rng(seed).integers(0, reference.size, size=(DRAWS, n))
    worse = np.sum(reference[picks] & ~candidate[picks], axis=1)
    better = np.sum(candidate[picks] & ~reference[picks], axis=1)
    counts, index = np.unique(np.stack([worse, better], axis=1), axis=0, return_inverse=True)
    bounds = np.array([upper_bound(int(w), int(b), n, CONFIDENCE) for w, b in counts])
    return float(np.mean(bounds[index.ravel()] <= BUDGET))


def test_a_candidate_worse_than_the_budget_is_certified_at_most_one_minus_confidence_of_the_time():
    reference, candidate = pool(50_000, worse=1_500, better=500, seed=0)  # true drop 2 pt
    assert paired_drop(reference, candidate, CONFIDENCE).drop == pytest.approx(0.02)
    assert acceptance_rate(reference, candidate, n=300, seed=1) <= 1 - CONFIDENCE + TOLERANCE


@pytest.mark.parametrize("worse, better", [(1_000, 500), (500, 0)])
def test_a_candidate_exactly_at_the_budget_is_certified_at_most_one_minus_confidence_of_the_time(
        worse, better):
    """The sharp case: a rule on the point estimate would accept it about half of the time."""
    reference, candidate = pool(50_000, worse, better, seed=4)  # true drop 1 pt = BUDGET
    assert acceptance_rate(reference, candidate, n=3_000, seed=5) <= 1 - CONFIDENCE + TOLERANCE


def test_a_candidate_as_good_as_its_reference_is_certified_most_of_the_time_on_enough_samples():
    reference, candidate = pool(50_000, worse=250, better=250, seed=2)  # true drop 0, 1 % disagree
    assert acceptance_rate(reference, candidate, n=3_000, seed=3) >= 0.9


@pytest.mark.parametrize("n", [20, 144, 360, 5_000])
def test_without_a_discordant_sample_the_bound_is_the_smallest_certifiable_drop(n):
    z2 = NormalDist().inv_cdf(CONFIDENCE) ** 2
    floor = z2 / (n + z2)
    assert upper_bound(0, 0, n, CONFIDENCE) == pytest.approx(floor)
    identical = PairedDrop(n, 0, 0, CONFIDENCE)
    assert identical.within(floor * 1.001) and not identical.within(floor * 0.999)


@pytest.mark.parametrize("worse, better", [(3, 1), (0, 4), (15, 0), (7, 7)])
def test_the_lower_bound_mirrors_the_upper_bound_with_the_roles_swapped(worse, better):
    drop = PairedDrop(300, worse, better, CONFIDENCE)
    assert drop.lower == -PairedDrop(300, better, worse, CONFIDENCE).upper
    assert drop.lower < drop.drop < drop.upper
