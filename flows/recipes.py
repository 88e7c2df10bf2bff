"""The recipes `shrinkflow bench` compares (flows/bench.py): the pipeline and the ones tutorials
print, each from the load stage's data split and trained teacher to a .tflite file.

Every quantized row converts as the quantize stage does (tasks/quantize.py `quantize_model`): the
tutorial's converter settings, checked to run in LiteRT, and a recurrent model's `int8` in the
form LiteRT runs fast (`recurrent_int8`, which needs no calibration: there ptq-random-calib is
ptq-int8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from flows.stages import run_stage
from tasks.artifacts import Workspace, copy_file
from tasks.choice import apply_choice
from tasks.config import Params, QuantizeConfig, QuantizeMode, SparsifyConfig
from tasks.models import read_model, seed_everything
from tasks.qat import quantization_aware_training
from tasks.quantize import calibration_samples, convert_to_tflite, quantize_model
from tasks.sparsify import sparsify
from tasks.splits import Dataset

if TYPE_CHECKING:
    import tf_keras as keras

REFERENCE = "fp32"
# teacher -> .tflite: the shrinkflow recipe (the search as configured: off by default)
COMPRESS_STAGES = ("search", "sparsify", "distill", "quantize")
# The tfmot pruning guide's recipe: 50 % -> 80 % polynomial decay while fine-tuning 2 epochs at
# batch 128 with Adam's default rate. Gotcha: tasks.sparsify reaches the target at 70 % of the
# steps (the guide at 100 %) and shrinks the update frequency to fit short runs.
GUIDE_PRUNING = SparsifyConfig(
    initial_sparsity=0.5, final_sparsity=0.8, frequency=100,
    epochs=2, batch_size=128, learning_rate=1e-3,
)
BENCH_QAT_EPOCHS = 4  # the qat row's epochs when quantize.qat_epochs is 0 (off)


class Built(NamedTuple):
    """What a recipe makes: the .tflite file and the parameter count of its Keras model."""

    tflite: bytes
    params: int


@dataclass(frozen=True)
class Bench:
    """What every recipe starts from: the load stage's outputs, in the pipeline's temp workspace."""

    params: Params
    ws: Workspace
    data: Dataset
    teacher: keras.Model


def fp32(bench: Bench) -> Built:
    """The teacher as an FP32 .tflite: the reference row."""
    return Built(convert_to_tflite(bench.teacher), bench.teacher.count_params())


def ptq_random_calib(bench: Bench) -> Built:
    """Full-INT8 PTQ calibrated on seeded random-uniform inputs in the range of the real
    calibration samples (tutorials)."""
    x = _calibration(bench)
    noise = np.random.default_rng(bench.params.seed).uniform(x.min(), x.max(), x.shape)
    return _teacher_in(bench, "int8", noise.astype(np.float32))


def ptq_int8(bench: Bench) -> Built:
    """Full-INT8 PTQ calibrated on real training samples, as the pipeline calibrates."""
    return _teacher_in(bench, "int8")


def ptq_dynamic(bench: Bench) -> Built:
    """Dynamic-range PTQ: INT8 weights, float activations and I/O, no calibration."""
    return _teacher_in(bench, "dynamic")


def ptq_float16(bench: Bench) -> Built:
    """Float16 weights, float compute and I/O."""
    return _teacher_in(bench, "float16")


def ptq_int16x8(bench: Bench) -> Built:
    """INT16 activations, INT8 weights, int16 I/O, calibrated on real samples (slow on x86)."""
    return _teacher_in(bench, "int16x8")


def mixed(bench: Bench) -> Built:
    """The teacher in quantize.mode mixed: per op INT4/INT8 weights or float (AI Edge Quantizer),
    chosen on the validation split within quantize.max_accuracy_drop."""
    return _teacher_in(bench, "mixed")


def prune_ptq(bench: Bench) -> Built:
    """The tfmot guide: pruning 50 % -> 80 % over 2 fine-tuning epochs, strip, INT8 PTQ."""
    seed_everything(bench.params.seed)
    pruned = sparsify(bench.teacher, bench.data, GUIDE_PRUNING).model
    return Built(_quantized(bench, pruned, "int8"), pruned.count_params())


def shrinkflow(bench: Bench) -> Built:
    """The pipeline with the configured params: its sparsify, distill and quantize stages."""
    run_stages(COMPRESS_STAGES, bench.params, bench.ws)
    return Built(bench.ws.model.read_bytes(), read_model(bench.ws.student).count_params())


def qat(bench: Bench) -> Built:
    """shrinkflow's student after quantization-aware training on the distillation loss
    (quantize.qat_epochs, or BENCH_QAT_EPOCHS when that is 0), then INT8. Wall time: QAT and
    conversion only, on top of shrinkflow's."""
    cfg = _mode(bench, "int8", bench.params.quantize.qat_epochs or BENCH_QAT_EPOCHS)
    student = read_model(bench.ws.student)
    distill = bench.params.distill
    trained = quantization_aware_training(student, bench.teacher, bench.data, cfg, distill)
    return Built(_quantized(bench, trained, "int8"), student.count_params())


def search(bench: Bench) -> Built:
    """The pipeline with search.enabled: the search chooses width, sparsity and mode on the
    validation split, then its sparsify, distill and quantize stages run with the choice. With
    quantize.qat_epochs, the modes searched are int8 only (Params refuses others with QAT)."""
    ws = Workspace(bench.ws.root / "search")
    for source, target in ((bench.ws.data, ws.data), (bench.ws.teacher, ws.teacher)):
        copy_file(source, target)
    int8_only = {"search.modes": ["int8"]} if bench.params.quantize.qat_epochs else {}
    searching = apply_choice(bench.params, {"search.enabled": True} | int8_only)
    run_stages(COMPRESS_STAGES, searching, ws)
    return Built(ws.model.read_bytes(), read_model(ws.student).count_params())


Recipe = Callable[[Bench], Built]
RECIPES: dict[str, Recipe] = {
    REFERENCE: fp32,
    "ptq-random-calib": ptq_random_calib,
    "ptq-int8": ptq_int8,
    "ptq-dynamic": ptq_dynamic,
    "ptq-float16": ptq_float16,
    "ptq-int16x8": ptq_int16x8,
    "mixed": mixed,
    "prune-ptq": prune_ptq,
    "shrinkflow": shrinkflow,
    "qat": qat,  # after shrinkflow: it starts from its student
    "search": search,
}


def run_stages(names: Iterable[str], params: Params, ws: Workspace) -> None:
    for name in names:
        run_stage(name, params, ws)


def _teacher_in(bench: Bench, mode: QuantizeMode,
                calibration: np.ndarray | None = None) -> Built:
    """The teacher in `mode` (`_quantized`)."""
    return Built(_quantized(bench, bench.teacher, mode, calibration),
                 bench.teacher.count_params())


def _quantized(bench: Bench, model: keras.Model, mode: QuantizeMode,
               calibration: np.ndarray | None = None) -> bytes:
    """`model` through the quantize stage's own conversion in `mode`, calibrated on
    `calibration` (default: the real training samples the pipeline calibrates on)."""
    calibration = _calibration(bench) if calibration is None else calibration
    return quantize_model(model, _mode(bench, mode), calibration, bench.data).tflite


def _mode(bench: Bench, mode: QuantizeMode, qat_epochs: int = 0) -> QuantizeConfig:
    """The configured quantize section in `mode`, validated (QAT off unless `qat_epochs`)."""
    return QuantizeConfig.model_validate(bench.params.quantize.model_dump() | {
        "enabled": True, "mode": mode, "qat_epochs": qat_epochs})


def _calibration(bench: Bench) -> np.ndarray:
    return calibration_samples(bench.data, bench.params.quantize, bench.params.seed)
