"""Sparse fine-tuning: tfmot magnitude pruning on the labels, then `strip_pruning`.

Two patterns: `unstructured` (zeros anywhere, per-layer targets on a schedule) and `2:4` (tfmot's
`sparsity_m_by_n=(2, 4)`: 2 zeros in every block of 4 weights along the input dimension, the last
axis of a TFLite weight tensor, so sparse kernels can skip them).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,
)

from tasks.artifacts import Workspace, copy_file, write_json
from tasks.config import SparsifyConfig
from tasks.errors import InputError
from tasks.models import (
    compile_for_labels,
    fit,
    layer_sparsity,
    overall_sparsity,
    read_model,
    seed_everything,
    write_model,
)
from tasks.splits import Dataset

log = logging.getLogger(__name__)

# Polynomial decay reaches the target at this share of the steps; the rest fine-tunes at target.
RAMP_SHARE = 0.7
M_BY_N = (2, 4)  # the `2:4` pattern: 2 zeros in every block of 4


@dataclass(frozen=True)
class SparseResult:
    model: keras.Model
    sparsity: float
    layer_sparsity: dict[str, float]
    skipped_layers: list[str]


def unprunable_layers(model: keras.Model, cfg: SparsifyConfig) -> list[str]:
    """Layers with weights that tfmot cannot prune in `cfg.pattern`, as `name (Type[: why])`.

    `2:4` also needs each pruned kernel's input dimension (axis -2: Conv2D's input channels,
    Dense's inputs) to be a multiple of 4, and a 2-D or 4-D kernel: tfmot pads a short last block
    (a 1-channel first conv keeps all its weights) and cannot rearrange other ranks.
    """
    unprunable = []
    for layer in keras.models.clone_model(model).layers:  # `_pruned_shapes` changes its layer
        kind = type(layer).__name__
        if layer.weights and not _prunable(layer):
            unprunable.append(f"{layer.name} ({kind})")
        elif cfg.pattern == "2:4" and any(_breaks_blocks(s) for s in _pruned_shapes(layer)):
            dims = ", ".join(f"{s[-2]} of {s}" for s in _pruned_shapes(layer))
            unprunable.append(f"{layer.name} ({kind}: input dimension {dims} is not a multiple "
                              f"of {M_BY_N[1]})")
    return unprunable


def check_prunable(model: keras.Model, cfg: SparsifyConfig) -> list[str]:
    """Apply the `unsupported_layers` policy: return the layers to skip, or refuse them."""
    skipped = unprunable_layers(model, cfg)
    if skipped and cfg.unsupported_layers == "error":
        raise InputError(
            f"sparsify: tfmot cannot prune {', '.join(skipped)} with sparsify.pattern "
            f"{cfg.pattern}; set sparsify.unsupported_layers: skip to leave them dense, or "
            "replace them"
        )
    return skipped


def pruning_schedule(
    cfg: SparsifyConfig, total_steps: int, final_sparsity: float | None = None
) -> tfmot.sparsity.keras.PruningSchedule:
    """The configured schedule, sized so the target is reached before training ends.

    Masks only change on steps that are multiples of `frequency`, so the end step is rounded to
    one; with fewer steps than `frequency` the frequency shrinks to fit. `final_sparsity` replaces
    the configured target for one layer; the initial sparsity is scaled with it.
    """
    final = cfg.final_sparsity if final_sparsity is None else final_sparsity
    frequency = max(1, min(cfg.frequency, total_steps // 2))
    if cfg.schedule == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(final, 0, frequency=frequency)
    initial = cfg.initial_sparsity * final / cfg.final_sparsity if cfg.final_sparsity else 0.0
    end_step = max(frequency, int(total_steps * RAMP_SHARE) // frequency * frequency)
    return tfmot.sparsity.keras.PolynomialDecay(initial, final, 0, end_step, frequency=frequency)


def layer_targets(layers: list[keras.layers.Layer], cfg: SparsifyConfig) -> dict[str, float]:
    """Final sparsity of each layer to prune, by name, for `cfg.final_sparsity` over them all.

    `uniform`: the target everywhere. `size_aware`: Erdos-Renyi-Kernel (Evci et al., 2020, RigL):
    a layer's density is proportional to the sum of its kernel's dimensions over its size, so
    small layers (first conv, classifier) stay denser; a layer that would be denser than 1 stays
    dense and the others share its zeros, so the total number of zeros is the same.
    """
    shapes = {layer.name: _pruned_shapes(layer) for layer in layers}
    shapes = {name: s for name, s in shapes.items() if s}  # e.g. BatchNorm, DepthwiseConv2D
    if cfg.allocation == "uniform" or cfg.final_sparsity == 0:
        return dict.fromkeys(shapes, cfg.final_sparsity)
    sizes = {name: sum(math.prod(shape) for shape in s) for name, s in shapes.items()}
    scores = {name: sum(sum(shape) for shape in s) / sizes[name] for name, s in shapes.items()}
    dense: set[str] = set()
    while True:
        kept = (1 - cfg.final_sparsity) * sum(sizes.values()) - sum(sizes[n] for n in dense)
        scale = kept / sum(scores[n] * sizes[n] for n in shapes if n not in dense)
        over = [n for n in shapes if n not in dense and scale * scores[n] > 1]
        if not over:
            return {n: 0.0 if n in dense else 1 - scale * scores[n] for n in shapes}
        dense.add(max(over, key=scores.get))


def final_sparsities(model: keras.Model, cfg: SparsifyConfig, skip: list[str]) -> dict[str, float]:
    """The layers pruning on `cfg` wraps (all with weights but `skip`), each with the share of its
    pruned weights that end as zeros: `layer_targets`, or `2:4`'s half. Gotcha: as
    `_pruned_shapes`, it changes `model`'s layers: call it on a copy."""
    skip_names = {entry.split(" ")[0] for entry in skip}
    prunable = [layer for layer in model.layers if layer.weights and layer.name not in skip_names]
    targets = layer_targets(prunable, cfg)
    return dict.fromkeys(targets, M_BY_N[0] / M_BY_N[1]) if cfg.pattern == "2:4" else targets


def training_steps(samples: int, epochs: int, batch_size: int) -> int:
    return epochs * math.ceil(samples / batch_size)


def wrap_for_pruning(
    model: keras.Model, cfg: SparsifyConfig, total_steps: int, skip: list[str]
) -> keras.Model:
    """Wrap every prunable layer (weights kept) in `prune_low_magnitude`: `unstructured` with its
    own schedule (`layer_targets`; a layer allocated no sparsity stays dense), `2:4` with tfmot's
    m-by-n masks. Gotcha: tfmot sets m-by-n masks once, at the first step, and ignores the
    schedule. Unprunable layers (`skip`) stay dense."""
    for layer in skip:
        log.warning("sparsify: leaving %s dense: tfmot cannot prune it", layer)
    copy = keras.models.clone_model(model)  # wrapping reuses layers: keep the caller's model intact
    copy.set_weights(model.get_weights())
    targets = final_sparsities(copy, cfg, skip)

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if cfg.pattern == "2:4" and layer.name in targets:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, sparsity_m_by_n=M_BY_N)
        if not targets.get(layer.name):
            return layer
        schedule = pruning_schedule(cfg, total_steps, targets[layer.name])
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

    return keras.models.clone_model(copy, clone_function=wrap)


def prune_at_once(model: keras.Model, cfg: SparsifyConfig, skip: list[str]) -> keras.Model:
    """A copy of `model` with the zeros pruning ends with, set in one step on its own weights (no
    training): each layer magnitude-pruned to its `layer_targets` target, or tfmot's `2:4` masks;
    `skip` stays dense. The same number of zeros per layer as after `sparsify`; where they fall
    follows these weights, not trained ones.

    A constant schedule prunes to the target on any step >= 1 (tfmot's `2:4` masks: on step 1
    only), so each wrapper's step is set to 1 before its masks are updated and applied."""
    constant = cfg.model_copy(update={"schedule": "constant"})
    wrapped = wrap_for_pruning(model, constant, total_steps=2, skip=skip)
    for layer in wrapped.layers:
        if isinstance(layer, PruneLowMagnitude):
            layer.pruning_step.assign(1)
            layer.pruning_obj.conditional_mask_update()
            layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def sparsify(model: keras.Model, data: Dataset, cfg: SparsifyConfig) -> SparseResult:
    """Fine-tune `model` on the labels while magnitude pruning drives it to the target sparsity."""
    skipped = check_prunable(model, cfg)
    total = training_steps(len(data.train), cfg.epochs, cfg.batch_size)
    pruned = wrap_for_pruning(model, cfg, total, skipped)
    compile_for_labels(pruned, data.task, cfg.learning_rate)
    fit(pruned, data, cfg, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    return SparseResult(
        model=stripped,
        sparsity=overall_sparsity(stripped),
        layer_sparsity=layer_sparsity(stripped),
        skipped_layers=skipped,
    )


def _prunable(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or PruneRegistry.supports(layer)


def _breaks_blocks(shape: tuple[int, ...]) -> bool:
    """True when tfmot's `2:4` blocks along axis -2 of a kernel of this shape would not fit."""
    return len(shape) not in (2, 4) or shape[-2] % M_BY_N[1] != 0


def _pruned_shapes(layer: keras.layers.Layer) -> list[tuple[int, ...]]:
    """Shapes of the weights tfmot prunes in `layer` (Dense/Conv: the kernel; Separable: the
    pointwise kernel; DepthwiseConv2D: none). Gotcha: `make_prunable` adds that method to the
    layer itself, so call this on a copy."""
    if not _prunable(layer):
        return []
    if not isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        PruneRegistry.make_prunable(layer)
    return [tuple(weight.shape) for weight in layer.get_prunable_weights()]


def run_sparsify(seed: int, cfg: SparsifyConfig, ws: Workspace,
                 prune_teacher: bool) -> dict[str, float]:
    """Stage: teacher -> sparse model, plus per-layer sparsity. Disabled, or `prune_teacher`
    False (`Params.prunes_teacher`: no later stage takes the sparse teacher): the teacher,
    unchanged, and no metric."""
    teacher, pruned = read_model(ws.teacher), cfg.enabled and prune_teacher
    if pruned:
        seed_everything(seed)
        result = sparsify(teacher, Dataset.load(ws.data), cfg)
        write_model(result.model, ws.sparse)
    else:
        if cfg.enabled:
            log.info("sparsify: the teacher passes on dense: distill's student starts from it "
                     "and is pruned while it learns (distill.width 1.0 prunes and distills the "
                     "teacher itself)")
        result = SparseResult(teacher, overall_sparsity(teacher), layer_sparsity(teacher), [])
        copy_file(ws.teacher, ws.sparse)
    write_json(
        ws.sparsity,
        {"pattern": cfg.pattern, "sparsity": result.sparsity, "layers": result.layer_sparsity,
         "skipped": result.skipped_layers},
    )
    return {"sparsity": result.sparsity} if pruned else {}

