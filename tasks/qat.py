"""Quantization-aware training (QAT): fine-tune the student with fake INT8 quantization in the loop.

tfmot's prune-preserving scheme (`Default8BitPrunePreserveQuantizeScheme`) keeps each kernel's
zeros fixed while it trains, so the converted model is exactly as sparse as the student (2:4
blocks included). The loss is distillation's (tasks/teaching.py `fit_to_teacher`): the teacher's
soft targets at distill.temperature, weighed by distill.alpha; with distill disabled, the labels.
"""

from __future__ import annotations

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tasks.config import DistillConfig, QuantizeConfig, Training
from tasks.data import Dataset
from tasks.errors import InputError
from tasks.teaching import compile_to_teacher, fit_to_teacher, soft_targets


def quantize_aware(model: keras.Model) -> keras.Model:
    """A copy of `model` with fake-quantized weights and activations (the model is unchanged).

    Refuses a layer tfmot cannot quantize; its error names the layer as `Layer NAME:<class>`.
    """
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    try:
        return tfmot.quantization.keras.quantize_apply(annotated, scheme)
    except RuntimeError as exc:
        failed = [layer for layer in model.layers if str(exc).startswith(f"Layer {layer.name}:")]
        if not failed:
            raise
        raise InputError(
            f"quantize.qat_epochs: tfmot cannot quantize layer {failed[0].name} "
            f"({type(failed[0]).__name__}) for quantization-aware training; set "
            "quantize.qat_epochs: 0 (post-training quantization only) or replace that layer"
        ) from exc


def quantization_aware_training(
    student: keras.Model,
    teacher: keras.Model,
    data: Dataset,
    cfg: QuantizeConfig,
    distill_cfg: DistillConfig,
) -> keras.Model:
    """`student` fine-tuned for `cfg.qat_epochs` with fake quantization, ready for the INT8
    converter (which then takes the trained ranges). Batch size: distill's."""
    model = quantize_aware(student)
    labels_only = {"alpha": 1.0}
    loss_cfg = distill_cfg if distill_cfg.enabled else distill_cfg.model_copy(update=labels_only)
    training = Training(epochs=cfg.qat_epochs, batch_size=distill_cfg.batch_size,
                        learning_rate=cfg.qat_learning_rate)
    compile_to_teacher(model, data.task, loss_cfg, training.learning_rate)
    fit_to_teacher(model, soft_targets(teacher, data), data, loss_cfg, training)
    return model
