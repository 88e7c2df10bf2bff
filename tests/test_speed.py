"""tasks/speed.py on real .tflite models in LiteRT: interleaved timing tells a model with 100 times
the work from a small one beyond noise, and a model from itself within it."""

import numpy as np
import pytest
import tf_keras as keras

from tasks.config import EvaluateConfig
from tasks.quantize import convert_to_tflite
from tasks.speed import ROUNDS, order_statistic_bound, slowdown

CFG = EvaluateConfig(latency_runs=200, warmup_runs=10)
SAMPLE = np.random.default_rng(0).random(64, dtype=np.float32)


def mlp(width: int) -> bytes:
    return convert_to_tflite(keras.Sequential([keras.Input((64,)),
                                               keras.layers.Dense(width, activation="relu"),
                                               keras.layers.Dense(10)]))


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {"small": mlp(16), "large": mlp(2048)}


def test_a_model_with_far_more_work_is_slower_beyond_noise_and_the_small_one_is_not(models):
    slower = slowdown(models["large"], models["small"], SAMPLE, CFG, 0.95)
    assert slower.beyond(2.0) and slower.lower <= slower.ratio <= slower.upper
    assert slower.model_us > slower.reference_us and slower.rounds == ROUNDS
    faster = slowdown(models["small"], models["large"], SAMPLE, CFG, 0.95)
    assert not faster.beyond(0.5) and faster.upper < 1


def test_a_model_timed_against_itself_is_within_noise(models):
    """Two interpreters of one model differ by a few % (6 % seen under load; its bounds may
    exclude 1): neither slower nor faster beyond noise."""
    for model in models.values():
        same = slowdown(model, model, SAMPLE, CFG, 0.95)
        assert not same.beyond(1.0) and not same.faster(), same


def test_the_bounds_are_the_order_statistics_a_binomial_allows():
    assert order_statistic_bound(20, 0.95) == 6  # P(Bin(20, 1/2) <= 5) = 2.1 %, <= 6: 5.8 %
    assert order_statistic_bound(20, 0.999) == 3
    assert order_statistic_bound(4, 0.95) == 0  # four ratios cannot bound the median at 95 %
