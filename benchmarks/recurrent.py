"""Recurrent classifiers in every quantization mode: .tflite size, gzip and LiteRT p50.

Sequences of rows: the 28x28 digit views of make_teachers.py as 28 steps x 28 features. For an
LSTM and a GRU at 128 units (the teacher) and at 32 (a width-0.25 student), each trained on the
labels for 4 epochs: the FP32 .tflite, each converter mode, and what the default (`int8`) gives
(tasks/quantize.py `recurrent_int8`), measured with the evaluator's runner (batch 1, 300 invokes
after 30, at 1 and 4 threads). Results: docs/quantization.md, Recurrent layers.

    .venv/bin/python benchmarks/recurrent.py
"""

import gzip
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import tf_keras as keras
from make_teachers import digit_views

from tasks.config import QuantizeConfig
from tasks.quantize import convert_to_tflite, quantize_model
from tasks.tflite import TFLiteClassifier

MODES = ("int8", "dynamic", "float16")  # int8 of a GRU crashes the converter: not tried


def classifier(cell: type[keras.layers.RNN], units: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((28, 28)), cell(units),
                             keras.layers.Dense(10, activation="softmax")])


def measure(name: str, tflite: bytes, x: np.ndarray, y: np.ndarray) -> None:
    accuracy = np.mean(TFLiteClassifier(tflite).predict(x).argmax(-1) == y)
    p50 = [TFLiteClassifier(tflite, threads).latency_us(x[0], 300, 30).p50_us for threads in (1, 4)]
    print(f"| {name} | {len(tflite):,} | {len(gzip.compress(tflite, 9)):,} | {100 * accuracy:.2f} % "
          f"| {p50[0]:.1f} | {p50[1]:.1f} |", flush=True)


def main() -> None:
    arrays = digit_views()
    x = {part: arrays[f"x_{part}"][..., 0] for part in ("train", "test")}
    calibration = x["train"][np.random.default_rng(0).permutation(len(x["train"]))[:200]]
    print("| model, mode | .tflite bytes | gzip bytes | test accuracy | p50 1 thread (us) | p50 4 threads (us) |")
    for cell in (keras.layers.LSTM, keras.layers.GRU):
        for units in (128, 32):
            model = classifier(cell, units)
            model.compile("adam", "sparse_categorical_crossentropy")
            model.fit(x["train"], arrays["y_train"], epochs=4, batch_size=64, verbose=0)
            name = f"{cell.__name__}({units})"
            measure(f"{name} fp32", convert_to_tflite(model), x["test"], arrays["y_test"])
            for mode in MODES[cell is keras.layers.GRU:]:
                measure(f"{name} {mode}", convert_to_tflite(model, mode, calibration),
                        x["test"], arrays["y_test"])
            default = quantize_model(model, QuantizeConfig(), calibration)
            measure(f"{name} default ({default.mode})", default.tflite, x["test"], arrays["y_test"])


if __name__ == "__main__":
    main()
