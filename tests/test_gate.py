"""The promotion gate's rules."""

import logging

import pytest

from tasks.config import GateConfig
from tasks.gate import Decision, Interface, judge, not_comparable, uncertifiable
from tasks.paired import PairedDrop, samples_to_certify, smallest_certifiable_drop

CHAMPION = {"accuracy": 0.97, "gzip_bytes": 20_000, "latency_p50_us": 3.0}


def candidate(**changes) -> dict:
    return CHAMPION | changes


N = 300
WITHIN = PairedDrop(N, worse=0, better=0, confidence=0.95)  # upper bound 0.89 pt: within 1 pt
NOISE = PairedDrop(N, worse=2, better=1, confidence=0.95)  # vs the champion: equal up to noise
WORSE = PairedDrop(N, worse=15, better=0, confidence=0.95)  # vs the champion: clearly worse


def judged(objective: str, new: dict, versus: PairedDrop = NOISE):
    return judge(GateConfig(objective=objective), new, WITHIN, CHAMPION, versus)


@pytest.mark.parametrize("objective, new, promote, reason", [
    ("smaller_gzip", candidate(gzip_bytes=15_000), True, "beats the champion: gzip_bytes 15000 vs"),
    ("smaller_gzip", candidate(), False, "does not beat the champion: gzip_bytes 20000 vs"),
    ("faster", candidate(latency_p50_us=2.0), True, "latency_p50_us 2 vs champion 3"),
    ("faster", candidate(gzip_bytes=1_000), False, "does not beat"),
    ("more_accurate", candidate(accuracy=0.98, gzip_bytes=90_000), True, "beats"),
    ("more_accurate", candidate(gzip_bytes=19_000), True, "beats"),
    ("more_accurate", candidate(), False, "does not beat"),
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


def test_the_accuracy_gate_holds_the_upper_bound_not_the_point_drop_and_comes_first():
    cfg = GateConfig(max_accuracy_drop=0.01)
    tiny = candidate(gzip_bytes=1)
    lucky = PairedDrop(360, worse=3, better=1, confidence=0.95)  # 0.56 pt, bound above 1 pt
    assert lucky.drop < cfg.max_accuracy_drop < lucky.upper
    refused = judge(cfg, tiny, lucky, CHAMPION, NOISE)
    assert not refused.promote
    assert refused.reason == (
        f"accuracy drop +0.56 pt, upper bound {100 * lucky.upper:.2f} pt at 95 % "
        "(3 worse, 1 better of 360) exceeds gate.max_accuracy_drop 1.00 pt")
    first = Decision(True, "first model within the accuracy gate")
    assert judge(cfg, tiny, WITHIN, None, None) == first


def test_a_test_split_too_small_to_certify_the_budget_is_named_with_the_way_out():
    cfg = GateConfig(max_accuracy_drop=0.01, confidence=0.95)
    needed = samples_to_certify(0.01, 0.95)
    assert uncertifiable(cfg, needed) is None
    warning = uncertifiable(cfg, 144)
    assert warning == (
        "the test split's 144 samples cannot certify a drop of 1.00 pt at 95 % confidence: even a "
        "model agreeing with the teacher on every one has an upper bound of "
        f"{100 * smallest_certifiable_drop(144, 0.95):.2f} pt; that takes {needed} samples "
        "(gate.max_accuracy_drop, gate.confidence), so the gate refuses every model not more "
        "accurate than the teacher; use more test samples (data.test_fraction, or x_test in the "
        "npz), raise gate.max_accuracy_drop, or lower gate.confidence")
    perfect = PairedDrop(144, 0, 0, 0.95)
    assert judge(cfg, CHAMPION, perfect, None, None).reason.endswith(f"; {warning}")
    assert "no number certifies a zero drop" in uncertifiable(
        GateConfig(max_accuracy_drop=0), 10_000)


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


def test_the_input_check_warns_before_any_training_and_the_run_goes_on(tiny_params, caplog):
    from flows.stages import check_inputs

    params = tiny_params("gate.max_accuracy_drop=0.01", "sparsify.enabled=false",
                         "distill.enabled=false")
    with caplog.at_level(logging.WARNING, logger="tasks.gate"):
        check_inputs(params)  # 500 digits: 100 test samples, no error
    assert gate_warnings(caplog) == [f"gate: {uncertifiable(params.gate, 100)}"]
    caplog.clear()
    check_inputs(tiny_params("gate.max_accuracy_drop=0.03", "sparsify.enabled=false",
                             "distill.enabled=false"))
    assert not gate_warnings(caplog)


def gate_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "tasks.gate"]
