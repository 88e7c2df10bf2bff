"""The promotion gate's rules: the accuracy rule (`gate.require`), then the champion."""

import pytest

from tasks.config import GateConfig
from tasks.fidelity import Fidelity
from tasks.gate import Evidence, Interface, decide_rule, judge, not_comparable
from tasks.paired import PairedDrop
from tasks.power import POWER, GateRule, power, samples_to_certify
from tasks.speed import Slowdown

CHAMPION = {"accuracy": 0.97, "gzip_bytes": 20_000, "latency_p50_us": 3.0}


def candidate(**changes) -> dict:
    return CHAMPION | changes


N = 300
WITHIN = PairedDrop(N, worse=0, better=0, confidence=0.95)  # upper bound 0.89 pt: within 1 pt
NOISE = PairedDrop(N, worse=2, better=1, confidence=0.95)  # vs the champion: equal up to noise
WORSE = PairedDrop(N, worse=15, better=0, confidence=0.95)  # vs the champion: clearly worse


def timed(ratio: float, spread: float = 0.05) -> Slowdown:
    """A slowdown measured at `ratio`, its bounds `spread` either side, of a 3 us reference."""
    return Slowdown(ratio, ratio - spread, ratio + spread, 3.0 * ratio, 3.0, 20, 0.95, 1)


AS_FAST = timed(1.0)


def evidence(labels: PairedDrop, require: str = "certified", errors: int = 6,
             fidelity: Fidelity | None = None, slowdown: Slowdown = AS_FAST) -> Evidence:
    """The gate's evidence on `labels.n` test samples, the teacher wrong on `errors` of them."""
    cfg = GateConfig(require=require)
    return Evidence(decide_rule(cfg, labels.n, errors, fidelity.n if fidelity else 0), labels,
                    slowdown, fidelity)


def judged(objective: str, new: dict, versus: PairedDrop = NOISE):
    """`new` vs CHAMPION, its latency over the champion's as if timed interleaved."""
    speed = timed(new["latency_p50_us"] / CHAMPION["latency_p50_us"])
    return judge(GateConfig(objective=objective), new, evidence(WITHIN), CHAMPION, versus, speed)


@pytest.mark.parametrize("objective, new, promote, reason", [
    ("smaller_gzip", candidate(gzip_bytes=15_000), True,
     "beats the champion: gzip 14.6 KiB vs the champion's 19.5 KiB ("),
    ("smaller_gzip", candidate(gzip_bytes=20_010), False,  # the same as shown: said exactly
     "does not beat the champion: gzip 20,010 B vs the champion's 20,000 B"),
    ("faster", candidate(latency_p50_us=2.0), True, "beats the champion: latency 2.0 vs"),
    ("faster", candidate(gzip_bytes=1_000), False, "not faster beyond noise"),
    ("faster", candidate(latency_p50_us=2.9), False, "not faster beyond noise"),  # 3 % faster
    ("more_accurate", candidate(accuracy=0.98, gzip_bytes=90_000), True, "beats"),
    ("more_accurate", candidate(gzip_bytes=19_000), True, "beats"),
    ("more_accurate", candidate(), False,
     "does not beat the champion: accuracy 97.0000 % vs the champion's 97.0000 %"),
    ("more_accurate", candidate(accuracy=0.96), False,
     "does not beat the champion: accuracy 96.00 % vs the champion's 97.00 %"),
])
def test_a_new_model_must_beat_the_champion_on_the_objective(objective, new, promote, reason):
    decision = judged(objective, new)
    assert decision.promote is promote
    assert reason in decision.reason


def test_a_candidate_less_accurate_only_within_noise_is_not_worse_and_wins_on_smaller_gzip():
    assert NOISE.drop > 0 and NOISE.lower < 0
    noisy = candidate(accuracy=CHAMPION["accuracy"] - NOISE.drop, gzip_bytes=15_000)
    assert judged("smaller_gzip", noisy).promote
    assert judged("faster", noisy | {"latency_p50_us": 2.0}).promote


@pytest.mark.parametrize("objective", ["smaller_gzip", "faster", "more_accurate"])
def test_a_candidate_less_accurate_beyond_noise_is_refused_whatever_it_saves(objective):
    assert WORSE.lower > 0
    worse = candidate(accuracy=0.92, gzip_bytes=1, latency_p50_us=0.1)
    decision = judged(objective, worse, versus=WORSE)
    assert not decision.promote
    assert decision.reason.startswith(
        "accuracy 92.00 % is below the champion's 97.00 % beyond noise: accuracy drop +5.00 pt, "
        f"lower bound {100 * WORSE.lower:.2f} pt at 95 % (15 worse, 0 better of 300)")


LUCKY = PairedDrop(360, worse=3, better=1, confidence=0.95)  # 0.56 pt, bound above 1 pt


def test_certified_holds_the_upper_bound_not_the_point_drop_and_comes_first():
    cfg = GateConfig(max_accuracy_drop=0.01, require="certified")
    tiny = candidate(gzip_bytes=1)
    assert LUCKY.drop < cfg.max_accuracy_drop < LUCKY.upper
    refused = judge(cfg, tiny, evidence(LUCKY), CHAMPION, NOISE, AS_FAST)
    assert not refused.promote
    assert refused.reason.startswith(
        f"uncertified: accuracy drop +0.56 pt, upper bound {100 * LUCKY.upper:.2f} pt at 95 % "
        "(3 worse, 1 better of 360); this test split certifies ")
    assert "over gate.max_accuracy_drop 1.00 pt" in refused.reason
    assert "gate.require certified: 360 test samples certify" in refused.reason  # the numbers
    first = judge(cfg, tiny, evidence(WITHIN), None, None, None)
    assert first.promote and first.reason.startswith("first model within the accuracy gate "
                                                     "(certified: accuracy drop +0.00 pt")


def test_estimate_promotes_on_the_point_estimate_and_says_it_is_uncertified():
    cfg = GateConfig(require="estimate")
    found = evidence(LUCKY, "estimate")
    assert found.passes and not found.certified
    decision = judge(cfg, candidate(), found, None, None, None)
    assert decision.promote and "(uncertified: accuracy drop +0.56 pt" in decision.reason
    assert found.tags()["gate.certified"] == "false" and found.tags()["gate.require"] == "estimate"
    over = PairedDrop(360, worse=6, better=1, confidence=0.95)  # 1.39 pt
    assert not judge(cfg, candidate(), evidence(over, "estimate"), None, None, None).promote
    assert evidence(WITHIN, "estimate").certified  # a bound within budget certifies, either rule


def test_auto_certifies_where_a_student_as_accurate_as_the_teacher_passes_with_power_0_8():
    errors_share = 0.03
    needed = samples_to_certify(GateRule("certified", 0.01, 0.95, 100), errors_share)
    assert power(GateRule("certified", 0.01, 0.95, needed), errors_share) >= POWER
    assert power(GateRule("certified", 0.01, 0.95, int(needed * 0.9)), errors_share) < POWER
    at = decide_rule(GateConfig(), needed, round(errors_share * needed))
    below = decide_rule(GateConfig(), int(needed * 0.9), round(errors_share * needed * 0.9))
    assert at.rule.require == "certified" and below.rule.require == "estimate"
    said = below.describe(GateConfig())
    assert said.startswith(f"gate.require auto -> estimate: {int(needed * 0.9):,} test samples "
                           "certify a 1.00 pt drop for a student as accurate as the teacher")
    for fix in ("more test samples", "data.unlabeled", "gate.require: certified",
                f"{100 * below.certifiable:.2f} pt"):
        assert fix in said
    assert below.certifiable > 0.01 and at.certifiable == pytest.approx(0.01, abs=2e-4)
    assert decide_rule(GateConfig(require="certified"), 100, 3).rule.require == "certified"


def test_fidelity_on_unlabeled_inputs_certifies_what_the_labels_cannot():
    cfg = GateConfig(require="certified")
    agreeing = Fidelity(n=2000, disagree=4, confidence=0.975)
    found = evidence(LUCKY, fidelity=agreeing)
    assert found.choice.rule.bound_confidence == 0.975  # two ways to certify: half the error each
    assert found.certified and not found.labels.within(0.01)
    decision = judge(cfg, candidate(), found, None, None, None)
    assert decision.promote
    assert "disagrees with the teacher on 4 of 2,000 unlabeled" in decision.reason
    assert not evidence(LUCKY, fidelity=Fidelity(2000, 30, 0.975)).certified


def test_a_champion_for_another_task_is_not_comparable_and_the_refusal_names_the_setting():
    cfg = GateConfig(registered_model="shrinkflow-int8")
    digits = Interface((8, 8, 1), 10)
    assert not_comparable(cfg, Interface((8, 8, 1), 10), digits) is None
    for champion in (Interface((32, 32, 3), 100), Interface((8, 8, 1), 12)):
        refusal = not_comparable(cfg, champion, digits)
        assert not refusal.promote
        assert f"the champion of gate.registered_model 'shrinkflow-int8' takes {champion}" in refusal.reason
        assert "--set gate.registered_model=shrinkflow-int8-<task>" in refusal.reason
    assert str(Interface((32, 32, 3), 100)) == "inputs (32, 32, 3) / 100 classes"


def test_a_candidate_slower_than_the_teacher_beyond_noise_is_refused_naming_both_latencies():
    refused = judge(GateConfig(), candidate(), evidence(WITHIN, slowdown=timed(2.6)), None, None,
                    None)
    assert not refused.promote
    assert refused.reason.startswith("slower than the teacher beyond noise: latency 7.8 vs the "
                                     "teacher's 3.0 us: 2.60x SLOWER (between 2.55x and 2.65x "
                                     "SLOWER at 95 %")
    assert "over gate.max_slowdown 1x" in refused.reason


def test_a_slowdown_within_noise_is_no_slowdown():
    """Its lower bound 3 % above the teacher's latency: within SAME_SPEED (10 %), what two
    interpreters of one model differ by."""
    noisy = judge(GateConfig(), candidate(), evidence(WITHIN, slowdown=timed(1.06, 0.03)), None,
                  None, None)
    assert noisy.promote and "slower" not in noisy.reason


def test_a_raised_max_slowdown_lets_a_slower_model_through_and_says_so():
    allowed = judge(GateConfig(max_slowdown=3), candidate(),
                    evidence(WITHIN, slowdown=timed(2.6)), None, None, None)
    assert allowed.promote
    assert "slower than the teacher beyond noise: latency 7.8" in allowed.reason
    assert "within gate.max_slowdown 3x" in allowed.reason


def test_a_smaller_candidate_slower_than_the_champion_beyond_noise_is_refused():
    smaller = candidate(gzip_bytes=15_000)
    assert judge(GateConfig(), smaller, evidence(WITHIN), CHAMPION, NOISE, timed(1.02)).promote
    refused = judge(GateConfig(), smaller, evidence(WITHIN), CHAMPION, NOISE, timed(1.5))
    assert not refused.promote
    assert refused.reason.startswith("slower than the champion beyond noise: latency 4.5 vs the "
                                     "champion's 3.0 us")

