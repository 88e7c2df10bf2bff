"""ViT students in int8: where their time goes, op by op, and what GELU -> ReLU buys.

The issue's ViT-tiny (tests/test_transformers.py `vit`): make_teachers.py's 28x28x1 digit views
in 4x4 patches, 49 tokens of 64 channels with learned positions, 4 blocks of 4 heads x key 16 and
a 128-unit GELU MLP (139 k params), trained 10 epochs on the labels. Its width-0.5 students
(2 heads, 32 channels, 64 MLP units), distilled for 5 epochs: teacher init with GELU (`keep`),
with ReLU (distill.activations `relu`), random init, and, to choose how attention narrows, one
that keeps all 4 heads and cuts each key to 8 instead (tasks/attention.py). Each full integer as
the quantize stage converts it; the teacher also in FP32, the first student also with a batch-1
signature, `dynamic` and FP32: test accuracy (students: as initialised and as distilled), p50 at
1 thread, latency over the first student's (interleaved: tasks/speed.py), and time by op type
(tasks/profile.py `op_times`, 1 thread).

Results (2026-12-08, the 2-core box, shared): of the int8 student's op time (702 us summed,
p50 502 us) attention's BATCH_MATMULs take 33 %, LayerNorm's SQUARED_DIFFERENCE, RSQRT, MEAN and
MUL about 25 %, the ops Keras traces for a dynamic batch (RESHAPE, SHAPE, REDUCE_PROD, GATHER,
FILL, PACK) 14 % (a batch-1 signature: 0.92x), SOFTMAX 6 %, GELU 0.3 %: `relu` gains nothing
(1.01x). Int8 is the slow form of a transformer here: the same student ran 0.19x as long in FP32
and 0.25x in `dynamic` (XNNPACK takes FP32 batch matmuls and LayerNorm's ops, not int8 ones), and
the int8 student took 2.2x the FP32 teacher's time (502 vs 225 us). tasks/attention.py and
tasks/friendly.py cite the rest.

    .venv/bin/python benchmarks/transformers.py
"""

import os
import sys
from collections import Counter
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import numpy as np
import tf_keras as keras
from make_teachers import digit_views
from test_transformers import vit

import tasks.quantize
import tasks.students
from tasks.config import DistillConfig, EvaluateConfig, QuantizeConfig, SparsifyConfig
from tasks.models import seed_everything
from tasks.profile import op_times
from tasks.quantize import convert_to_tflite, quantize_model
from tasks.speed import slowdown
from tasks.splits import Dataset, Split
from tasks.students import derive_student
from tasks.teaching import distill
from tasks.tflite import TFLiteClassifier

VIT_TINY = {"shape": (28, 28, 1), "patch": 4, "dim": 64, "blocks": 4, "heads": 4, "key": 16,
            "mlp": 128}


def key_sliced(config: dict, width: float, narrowed) -> dict:
    """MultiHeadAttention narrowed the other way: every head, each key and value `width` as
    large."""
    return {name: value for name, value in config.items()
            if name not in ("query_shape", "key_shape", "value_shape")} | {
        size: max(1, round(config[size] * width)) for size in ("key_dim", "value_dim")}


def int8(model: keras.Model, calibration: np.ndarray, static_batch: bool = False) -> bytes:
    """`model` as the quantize stage converts it (full integer); or with a batch-1 signature, as
    tasks/quantize.py converts recurrent models (`is_recurrent` true)."""
    if static_batch:
        with mock.patch.object(tasks.quantize, "is_recurrent", return_value=True):
            return convert_to_tflite(model, "int8", calibration)
    return quantize_model(model, QuantizeConfig(), calibration).tflite


def accuracy(tflite: bytes, data: Dataset) -> str:
    predicted = TFLiteClassifier(tflite).predict(data.test.read(slice(None))).argmax(-1)
    return f"{100 * np.mean(predicted == data.test.labels):.2f} %"


def measure(name: str, params: int, accuracies: str, tflite: bytes, reference: bytes,
            sample: np.ndarray) -> None:
    """One table row: `tflite`'s p50 at 1 thread, its latency over `reference`'s (interleaved,
    tasks/speed.py: the box is shared) and its time by op type."""
    p50 = TFLiteClassifier(tflite).latency_us(sample, 500, 50).p50_us
    ratio = slowdown(tflite, reference, sample, EvaluateConfig(latency_runs=400), 0.95)
    by_type = Counter()
    for op in op_times(tflite, sample, threads=1, runs=400):
        by_type[op.op] += op.us
    ops = ", ".join(f"{op} {us:.0f}" for op, us in by_type.most_common() if us >= 0.5)
    print(f"| {name} | {params:,} | {accuracies} | {p50:.0f} | {ratio.ratio:.2f}x "
          f"({ratio.lower:.2f}-{ratio.upper:.2f}) | {ops} |", flush=True)


def main() -> None:
    arrays = digit_views()
    data = Dataset(*(Split.of(arrays[f"x_{part}"], arrays[f"y_{part}"])
                     for part in ("train", "val", "test")))
    calibration = arrays["x_train"][np.random.default_rng(0).permutation(len(data.train))[:200]]
    seed_everything(0)
    teacher = vit(**VIT_TINY)
    teacher.compile("adam", "sparse_categorical_crossentropy")
    teacher.fit(arrays["x_train"], arrays["y_train"], epochs=10, batch_size=64, verbose=2)
    rows = [(f"teacher{form}", teacher.count_params(), accuracy(tflite, data), tflite)
            for form, tflite in (("", int8(teacher, calibration)),
                                 (", fp32 (not int8)", convert_to_tflite(teacher)))]
    students = {"0.5 GELU": derive_student(teacher, 0.5, "teacher"),
                "0.5 ReLU": derive_student(teacher, 0.5, "teacher", "relu"),
                "0.5 GELU, random init": derive_student(teacher, 0.5, "random")}
    with mock.patch.object(tasks.students, "narrowed_attention", key_sliced):
        students["0.5 GELU, 4 heads of key 8"] = derive_student(teacher, 0.5, "teacher")
    for name, student in students.items():
        initial = accuracy(int8(student, calibration), data)
        seed_everything(0)
        student = distill(teacher, student, data, DistillConfig(epochs=5),
                          SparsifyConfig(enabled=False))
        forms = {"": int8(student, calibration)}
        if name == "0.5 GELU":
            forms |= {", batch-1 signature": int8(student, calibration, static_batch=True),
                      ", dynamic (not int8)": convert_to_tflite(student, "dynamic"),
                      ", fp32 (not int8)": convert_to_tflite(student)}
        rows += [(f"student {name}{form}", student.count_params(),
                  f"{initial}, {accuracy(tflite, data)}", tflite)
                 for form, tflite in forms.items()]
    print("| model (int8 unless said) | params | test accuracy (as initialised, distilled) "
          "| p50 1 thread (us) | latency over the 0.5 GELU student's (95 % bounds) "
          "| us by op type |")
    for row in rows:
        measure(*row, rows[2][-1], calibration[0])


if __name__ == "__main__":
    main()
