"""INT8 conversion: int8 in and out, real calibration samples, pruned zeros kept."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tasks.config import QuantizeConfig, SparsifyConfig
from tasks.errors import InputError
from tasks.evaluate import weight_sparsity
from tasks.quantize import calibration_samples, convert_to_tflite
from tasks.sparsify import sparsify


def test_int8_model_takes_and_returns_int8(digits, trained_cnn):
    model = convert_to_tflite(trained_cnn, digits.x_train[:20])
    interpreter = Interpreter(model_content=model)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    fp32 = Interpreter(model_content=convert_to_tflite(trained_cnn))
    assert fp32.get_input_details()[0]["dtype"] == np.float32
    assert len(model) < len(convert_to_tflite(trained_cnn)) / 2  # 4-byte weights became 1-byte


def test_pruned_zeros_stay_zeros(digits, trained_cnn):
    sparse = sparsify(trained_cnn, digits, SparsifyConfig(epochs=1, final_sparsity=0.8)).model
    assert weight_sparsity(convert_to_tflite(sparse, digits.x_train[:20])) == pytest.approx(0.8, abs=0.01)
    assert weight_sparsity(convert_to_tflite(trained_cnn, digits.x_train[:20])) < 0.05


def test_calibration_draws_real_training_samples_repeatably(digits):
    drawn = calibration_samples(digits, QuantizeConfig(calibration_samples=25), seed=3)
    assert drawn.shape == (25, *digits.input_shape)
    train_rows = {row.tobytes() for row in digits.x_train}
    assert all(row.tobytes() in train_rows for row in drawn)
    again = calibration_samples(digits, QuantizeConfig(calibration_samples=25), seed=3)
    np.testing.assert_array_equal(drawn, again)


def test_more_calibration_samples_than_the_split_is_refused(digits):
    with pytest.raises(InputError, match="calibration_samples is 301 .* at most 300"):
        calibration_samples(digits, QuantizeConfig(calibration_samples=301), seed=0)
