"""A candidate's size before training: close to the trained trial's, monotone, mixed a bound."""

import math

import pytest

from tasks.choice import apply_choice
from tasks.estimate import estimate_candidate
from tasks.models import read_model
from tasks.search import run_trial, search_inputs

# Measured on this model (int8, 0.8): the trained trial's gzip is 1.6 % larger than the
# estimate's (its zeros and values come from training, not from the initial weights); on the
# default digits CNN int8 stayed within 1.5 % (float16 up to 7 %: not tested here). The .tflite
# bytes are set by the architecture and the mode alone: only the quantization scales differ.
GZIP_TOLERANCE = 0.05
TFLITE_TOLERANCE = 0.01


def choice(params, width: float, sparsity: float, mode: str):
    return apply_choice(params, {"distill.width": width, "sparsify.final_sparsity": sparsity,
                                 "quantize.mode": mode})


def test_estimate_is_close_to_the_trained_trial(trained_cnn, digits, tiny_params, tmp_path):
    params = choice(tiny_params(), 1.0, 0.8, "int8")  # distill 1 epoch, pruned while it learns
    estimate = estimate_candidate(trained_cnn, digits, params)
    inputs = search_inputs(digits, trained_cnn, confirm_fraction=0.5, seed=0)
    student = tmp_path / "student.h5"
    trained = run_trial(inputs, params, best=lambda: math.inf, stop=lambda epoch, drop: False,
                        student_path=student).metrics
    assert estimate.params == trained.params == read_model(student).count_params()
    assert estimate.gzip_bytes == pytest.approx(trained.gzip_bytes, rel=GZIP_TOLERANCE)
    assert estimate.tflite_bytes == pytest.approx(trained.tflite_bytes, rel=TFLITE_TOLERANCE)
    assert estimate.latency_p50_us > 0


def test_estimates_shrink_with_width_and_sparsity_and_mixed_is_a_lower_bound(
    tiny_cnn, digits, tiny_params
):
    params = tiny_params()

    def estimate(width: float, sparsity: float, mode: str = "int8"):
        return estimate_candidate(tiny_cnn, digits, choice(params, width, sparsity, mode))

    base = estimate(1.0, 0.8)
    narrower, sparser = estimate(0.5, 0.8), estimate(1.0, 0.95)
    assert narrower.params < base.params
    assert narrower.gzip_bytes < base.gzip_bytes and narrower.tflite_bytes < base.tflite_bytes
    assert sparser.gzip_bytes < base.gzip_bytes
    mixed = estimate(1.0, 0.8, "mixed")
    assert mixed.gzip_bytes <= base.gzip_bytes and mixed.tflite_bytes <= base.tflite_bytes
