"""Sparse fine-tuning: the schedule reaches its target, unsupported layers follow the policy."""

import pytest
import tf_keras as keras
from conftest import REPO

from flows.stages import run_stage
from flows.workspace.params import load_params
from tasks import progress
from tasks.artifacts import Workspace
from tasks.config import SparsifyConfig, Training
from tasks.errors import InputError
from tasks.models import (
    compile_for_labels,
    fit,
    layer_sparsity,
    overall_sparsity,
    read_model,
    write_model,
)
from tasks.sparsify import layer_targets, prune_at_once, pruning_schedule, sparsify


@pytest.mark.parametrize("schedule", ["polynomial_decay", "constant"])
def test_sparsify_reaches_the_target_and_strips_the_wrappers(digits, trained_cnn, schedule):
    cfg = SparsifyConfig(epochs=2, schedule=schedule, final_sparsity=0.75, frequency=5,
                         allocation="uniform")
    result = sparsify(trained_cnn, digits, cfg)
    assert result.sparsity == pytest.approx(0.75, abs=0.01)
    assert set(result.layer_sparsity) == {"conv/kernel", "dense/kernel", "out/kernel"}
    assert all(s == pytest.approx(0.75, abs=0.02) for s in result.layer_sparsity.values())
    assert [type(layer).__name__ for layer in result.model.layers] == [
        "Conv2D", "Flatten", "Dense", "Dense"
    ]
    predicted = result.model.predict(digits.val.read(), verbose=0).argmax(axis=1)
    assert (predicted == digits.val.labels).mean() > 0.3  # still a classifier: chance is 0.1


@pytest.mark.parametrize("distill, pruned", [
    ("distill.width=1.0", True), ("distill.enabled=false", True),
    ("distill.width=0.25", False), ("distill.student=student.h5", False)])
def test_the_stage_prunes_the_teacher_only_when_its_model_goes_on(
        digits, trained_cnn, tmp_path, distill, pruned):
    """Distilled at width 1.0 or passed on as it is, the teacher is pruned; a student derived
    from the dense teacher (or read from a file) leaves it dense and untrained (the file as is)."""
    ws = Workspace(tmp_path)
    digits.save(ws.data)
    write_model(trained_cnn, ws.teacher)
    params = load_params(REPO / "params.yaml", ["sparsify.epochs=1", distill])
    metrics = run_stage("sparsify", params, ws)
    assert params.prunes_teacher == pruned
    if pruned:
        assert overall_sparsity(read_model(ws.sparse)) == pytest.approx(0.8, abs=0.01)
        assert metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    else:
        assert ws.sparse.read_bytes() == ws.teacher.read_bytes() and metrics == {}


def test_size_aware_allocation_keeps_small_layers_denser_at_the_same_overall_sparsity(
    digits, trained_cnn
):
    cfg = SparsifyConfig(epochs=2, final_sparsity=0.75, frequency=5, allocation="size_aware")
    result = sparsify(trained_cnn, digits, cfg)
    assert result.sparsity == pytest.approx(0.75, abs=0.01)
    layers = result.layer_sparsity  # conv: 72 weights, out: 320, dense: 9216
    assert layers["conv/kernel"] < 0.75 and layers["out/kernel"] < 0.75 < layers["dense/kernel"]
    targets = layer_targets(trained_cnn.layers, cfg)
    assert targets["conv"] == 0.0  # would be denser than dense: left dense, its zeros moved
    assert set(targets) == {"conv", "dense", "out"}  # Flatten has nothing to prune


def test_polynomial_schedule_ends_on_a_mask_update_before_training_ends():
    cfg = SparsifyConfig(frequency=10)
    schedule = pruning_schedule(cfg, total_steps=100)
    assert schedule.end_step % schedule.frequency == 0
    assert schedule.end_step < 100
    short = pruning_schedule(cfg, total_steps=6)  # fewer steps than the frequency
    assert short.frequency <= 3 and short.end_step <= 6


def prelu_model(digits):
    return keras.Sequential([
        keras.Input(digits.input_shape),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(16, name="dense"),
        keras.layers.PReLU(name="prelu"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])


def test_unprunable_layer_is_skipped_and_named(digits):
    cfg = SparsifyConfig(epochs=1, final_sparsity=0.6, allocation="uniform")
    result = sparsify(prelu_model(digits), digits, cfg)
    assert result.skipped_layers == ["prelu (PReLU)"]
    assert result.layer_sparsity["dense/kernel"] == pytest.approx(0.6, abs=0.02)
    prelu = result.model.get_layer("prelu")
    assert (prelu.get_weights()[0] == 0).mean() < 0.5  # left dense


def test_unprunable_layer_stops_the_run_when_configured(digits):
    with pytest.raises(InputError, match=r"cannot prune prelu \(PReLU\).*unsupported_layers"):
        sparsify(prelu_model(digits), digits, SparsifyConfig(epochs=1, unsupported_layers="error"))


def test_prune_at_once_reaches_each_layers_target_and_the_2_4_pattern(tiny_cnn):
    cfg = SparsifyConfig(final_sparsity=0.75)  # size_aware
    pruned = prune_at_once(tiny_cnn, cfg, skip=[])
    targets = layer_targets(tiny_cnn.layers, cfg)
    assert overall_sparsity(pruned) == pytest.approx(0.75, abs=0.01)
    assert layer_sparsity(pruned) == pytest.approx(
        {f"{name}/kernel": target for name, target in targets.items()}, abs=0.01)
    assert overall_sparsity(tiny_cnn) == 0  # the caller's model keeps its weights
    paired = prune_at_once(tiny_cnn, SparsifyConfig(pattern="2:4"), skip=["conv (Conv2D: ...)"])
    dense = paired.get_layer("dense").get_weights()[0]  # [in, out]: blocks of 4 inputs
    assert ((dense.T.reshape(-1, 4) == 0).sum(axis=1) >= 2).all()
    assert layer_sparsity(paired)["conv/kernel"] == 0  # skipped: left dense


def test_long_epochs_report_progress_and_samples_per_second_within_epochs(
        trained_cnn, digits, monkeypatch):
    told = []
    monkeypatch.setattr(progress, "BATCH_SECONDS", 0.0)  # every batch
    token = progress.batch_listener.set(lambda done, rate: told.append((done, rate)))
    try:
        compile_for_labels(trained_cnn, digits.task, 1e-3)
        fit(trained_cnn, digits, Training(epochs=2, batch_size=50))
    finally:
        progress.batch_listener.reset(token)
    steps = -(-len(digits.train) // 50)
    expected = [(i + 1) / (2 * steps) for i in range(2 * steps)]
    assert [done for done, _ in told] == pytest.approx(expected)
    assert all(rate > 0 for _, rate in told)
