"""tasks/profile.py on real .tflite models: each op's time by difference of cut graphs, timed in
interleaved rounds; the op that does the work is found."""

import numpy as np
import pytest
import tf_keras as keras

import tasks.profile
from flows.record.report import slowest_line
from tasks.profile import OpTime, fused_groups, op_times, slowest_ops
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
    # in order, each once (the last two may come out fused: a cut ending at SOFTMAX can run
    # faster than one ending at the FULLY_CONNECTED before it)
    assert "+".join(op.op for op in ops).split("+") == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert [index for op in ops for index in range(op.index, (op.last or op.index) + 1)] == [
        0, 1, 2, 3]
    assert all(op.us >= 0 for op in ops) and sum(op.share for op in ops) == pytest.approx(1)
    slowest = slowest_ops(wide_first, SAMPLE, threads=1, runs=200, shown=2)
    assert len(slowest) == 2 and slowest[0].index == 0 and slowest[0].share > 0.5


def test_a_model_too_large_to_hold_every_cut_is_not_profiled(wide_first, monkeypatch):
    monkeypatch.setattr(tasks.profile, "MAX_HELD_BYTES", len(wide_first))
    assert op_times(wide_first, SAMPLE, threads=1, runs=200) == []


def test_the_summary_names_the_slowest_ops():
    ops = [OpTime(index=0, op="UNIDIRECTIONAL_SEQUENCE_LSTM", us=1171.04, share=0.962)]
    assert slowest_line(ops, 1) == ("slowest ops of the final model, 1 thread: "
                                    "UNIDIRECTIONAL_SEQUENCE_LSTM #0 1171.0 us (96 %)")


def test_an_op_faster_than_the_cut_before_it_in_every_round_is_fused_with_that_op():
    """ResNet50's stem: PAD alone 12.7 us, PAD and the convolution after it 8.8 us (XNNPACK
    fuses them, but not when the PAD's output is the cut's output). An op within noise of zero
    (negative in some rounds only, or by under a hundredth of the model's time) stays alone."""
    differences = np.array([[12.7, -3.9, 2.8, -0.1, 0.4, -0.05],
                            [12.6, -4.0, 2.9, 0.1, 0.3, -0.05],
                            [12.8, -3.8, 2.7, -0.1, -0.2, -0.05]])
    assert fused_groups(differences) == [[0, 1], [2], [3], [4], [5]]
    assert str(OpTime(0, "PAD+CONV_2D", 8.8, 0.5, last=1)) == "PAD+CONV_2D #0-1 8.8 us (50 %)"
