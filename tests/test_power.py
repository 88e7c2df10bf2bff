"""The gate's odds (tasks/power.py) and the fidelity bound (tasks/fidelity.py), checked against
simulation: what they promise is what repeated draws show."""

import numpy as np
import pytest

from tasks.fidelity import Fidelity, fidelity, inputs_to_certify
from tasks.paired import upper_bound
from tasks.power import GateRule, chance_to_pass, pass_probability, power, worst_passing

DRAWS = 4000


@pytest.mark.parametrize("require", ["certified", "estimate"])
def test_the_pass_probability_is_what_repeated_test_splits_show(require):
    rule = GateRule(require, 0.01, 0.95, 360)
    p_worse, p_better = 0.012, 0.008
    counts = np.random.default_rng(0).multinomial(360, [p_worse, p_better, 0.98], DRAWS)
    passed = [(upper_bound(w, b, 360, 0.95) <= 0.01 + 1e-9) if require == "certified"
              else (w - b <= 3.6) for w, b, _ in counts]
    assert pass_probability(rule, p_worse, p_better) == pytest.approx(np.mean(passed), abs=0.025)


def test_each_discordant_count_passes_up_to_its_threshold_and_no_further():
    rule = GateRule("certified", 0.01, 0.95, 2000)
    for discordant in (0, 5, 20, 60):
        worst = worst_passing(rule, discordant)
        assert upper_bound(worst, discordant - worst, 2000, 0.95) <= 0.01 + 1e-9
        assert worst == discordant or upper_bound(worst + 1, discordant - worst - 1, 2000,
                                                  0.95) > 0.01


def test_the_power_grows_with_the_test_split_and_a_pool_can_add_to_it():
    powers = [power(GateRule("certified", 0.01, 0.95, n), 0.02) for n in (300, 1000, 3000)]
    assert powers == sorted(powers) and powers[0] < 0.8 < powers[-1]
    with_pool = power(GateRule("certified", 0.01, 0.95, 300, pool=20_000), 0.01)
    assert with_pool > power(GateRule("certified", 0.01, 0.95, 300), 0.01)


def test_a_candidates_chance_falls_with_what_it_lost_on_validation_and_is_not_optimistic():
    rule = GateRule("estimate", 0.01, 0.95, 360)
    chances = [chance_to_pass(rule, worse, 0, 144) for worse in range(5)]
    assert chances == sorted(chances, reverse=True) and chances[0] > 0.9 > 0.3 > chances[-1]
    assert chance_to_pass(rule, 1, 0, 144) == chance_to_pass(rule, 1, 0, 144)  # seeded
    # candidates with rates spread over 0-2 % each way pass about as often as their chances
    # say, never less (Jeffreys' prior leans a little towards discordance: measured 0.75 vs 0.82)
    rng = np.random.default_rng(1)
    said, passed = [], []
    for p_worse, p_better in rng.uniform(0, 0.02, (300, 2)):
        w, b, _ = rng.multinomial(144, [p_worse, p_better, 1 - p_worse - p_better])
        said.append(chance_to_pass(rule, w, b, 144))
        tw, tb, _ = rng.multinomial(360, [p_worse, p_better, 1 - p_worse - p_better])
        passed.append(tw - tb <= 3.6)
    assert np.mean(passed) - 0.1 <= np.mean(said) <= np.mean(passed) + 0.02


def pool_draws(rate: float, n: int, seed: int) -> np.ndarray:
    """Disagreement counts of `n` inputs drawn DRAWS times from a pool of 200,000 on which a
    student disagrees with the teacher on exactly `rate` of the inputs."""
    pool = np.zeros(200_000, bool)
    pool[: round(rate * pool.size)] = True
    rng = np.random.default_rng(seed)
    return np.array([pool[rng.integers(0, pool.size, n)].sum() for _ in range(DRAWS)])


def test_fidelity_certifies_a_student_at_the_budget_at_most_one_time_in_twenty():
    disagreements = pool_draws(0.01, 3000, seed=2)  # true drop up to the 1-point budget
    certified = [Fidelity(3000, int(k), 0.95).within(0.01) for k in disagreements]
    assert np.mean(certified) <= 0.05 + 0.01


def test_fidelity_certifies_a_student_that_rarely_disagrees_on_enough_inputs():
    disagreements = pool_draws(0.003, 3000, seed=3)
    assert np.mean([Fidelity(3000, int(k), 0.95).within(0.01) for k in disagreements]) >= 0.9
    assert inputs_to_certify(0.01, 0.95) == 299  # a student that never disagrees, fewer: never
    assert Fidelity(299, 0, 0.95).within(0.01) and not Fidelity(298, 0, 0.95).within(0.01)


def test_fidelity_counts_the_inputs_on_which_the_predicted_classes_differ():
    found = fidelity(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0]), 0.95)
    assert (found.n, found.disagree, found.rate) == (4, 2, 0.5)
    assert found.describe().startswith("disagrees with the teacher on 2 of 4 unlabeled inputs")
