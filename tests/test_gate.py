"""The promotion gate's rules."""

import pytest

from tasks.config import GateConfig
from tasks.gate import Interface, judge, not_comparable

CHAMPION = {"accuracy": 0.97, "gzip_bytes": 20_000, "latency_p50_us": 3.0}


def candidate(**changes) -> dict:
    return CHAMPION | changes


@pytest.mark.parametrize("objective, new, promote, reason", [
    ("smaller_gzip", candidate(gzip_bytes=15_000), True, "beats the champion: gzip_bytes 15000 vs"),
    ("smaller_gzip", candidate(), False, "does not beat the champion: gzip_bytes 20000 vs"),
    ("smaller_gzip", candidate(gzip_bytes=15_000, accuracy=0.96), False, "below the champion's"),
    ("faster", candidate(latency_p50_us=2.0), True, "latency_p50_us 2 vs champion 3"),
    ("faster", candidate(gzip_bytes=1_000), False, "does not beat"),
    ("more_accurate", candidate(accuracy=0.98, gzip_bytes=90_000), True, "beats"),
    ("more_accurate", candidate(gzip_bytes=19_000), True, "beats"),
    ("more_accurate", candidate(), False, "does not beat"),
])
def test_a_new_model_must_beat_the_champion_on_the_objective(objective, new, promote, reason):
    decision = judge(GateConfig(objective=objective), new, accuracy_drop=0.005, champion=CHAMPION)
    assert decision.promote is promote
    assert reason in decision.reason


def test_the_accuracy_gate_comes_first_and_the_first_model_within_it_wins():
    cfg = GateConfig(max_accuracy_drop=0.01)
    tiny = candidate(gzip_bytes=1)
    refused = judge(cfg, tiny, accuracy_drop=0.02, champion=CHAMPION)
    assert not refused.promote and "accuracy drop 0.0200 exceeds gate.max_accuracy_drop 0.01" in refused.reason
    assert judge(cfg, tiny, accuracy_drop=0.01, champion=None).promote


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
