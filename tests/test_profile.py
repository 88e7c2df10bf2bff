"""tasks/profile.py on real .tflite models: each op's time by difference of cut graphs, timed in
interleaved rounds; the op that does the work is found."""

import numpy as np
import pytest
import tf_keras as keras

import tasks.profile
from flows.record.report import slowest_line
from tasks.profile import op_times, slowest_ops
from tasks.quantize import convert_to_tflite

SAMPLE = np.random.default_rng(0).random(64, dtype=np.float32)


@pytest.fixture(scope="module")
def wide_first() -> bytes:
    """A 64 -> 2048 dense layer, then two small ones: the first does nearly all the work."""
    return convert_to_tflite(keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")]))


def test_every_op_is_timed_and_the_one_doing_the_work_is_the_slowest(wide_first):
    ops = op_times(wide_first, SAMPLE, threads=1, runs=200)
    assert [op.op for op in ops] == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert [op.index for op in ops] == [0, 1, 2, 3]
    assert all(op.us >= 0 for op in ops) and sum(op.share for op in ops) == pytest.approx(1)
    slowest = slowest_ops(wide_first, SAMPLE, threads=1, runs=200, shown=2)
    assert len(slowest) == 2 and slowest[0].index == 0 and slowest[0].share > 0.5


def test_a_model_too_large_to_hold_every_cut_is_not_profiled(wide_first, monkeypatch):
    monkeypatch.setattr(tasks.profile, "MAX_HELD_BYTES", len(wide_first))
    assert op_times(wide_first, SAMPLE, threads=1, runs=200) == []


def test_the_summary_names_the_slowest_ops():
    metrics = {"slowdown": {"threads": 1}, "slowest_ops": [
        {"index": 0, "op": "UNIDIRECTIONAL_SEQUENCE_LSTM", "us": 1171.04, "share": 0.962}]}
    assert slowest_line(metrics) == ("slowest ops of the final model, 1 thread: "
                                     "UNIDIRECTIONAL_SEQUENCE_LSTM #0 1171.0 us (96 %)")
