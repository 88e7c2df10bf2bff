"""Plots a person would rather look at than read: the size/accuracy trade-off and layer sparsity."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers, CI, Prefect workers
import matplotlib.pyplot as plt  # noqa: E402

from tasks.artifacts import atomic_path  # noqa: E402


def plot_tradeoff(candidates: dict[str, dict[str, float]], path: Path) -> None:
    """Accuracy against gzip size (log scale) for every candidate."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in candidates.items():
        ax.scatter(m["gzip_bytes"] / 1024, m["accuracy"], s=60)
        ax.annotate(name, (m["gzip_bytes"] / 1024, m["accuracy"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("gzip size (KiB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs compressed size")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def plot_layer_sparsity(layers: dict[str, dict[str, float]], path: Path) -> None:
    """Fraction of zero weights per layer, one bar group per model."""
    names = sorted({layer for per_model in layers.values() for layer in per_model})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) * len(layers)), 4))
    width = 0.8 / max(1, len(layers))
    for i, (model, per_layer) in enumerate(layers.items()):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [per_layer.get(n, 0.0) for n in names], width=width, label=model)
    ax.set_xticks([j + width * (len(layers) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity (fraction of zero weights)")
    ax.set_title("Per-layer sparsity")
    ax.legend()
    _save(fig, path)


def plot_quant_sensitivity(sensitivity: dict, path: Path) -> None:
    """Validation error per op with only that op quantized, one bar per precision; the FP32
    error as a line; each op labelled with the precision the model got. Without layers (modes
    other than mixed) the figure says so."""
    layers = sensitivity["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(layers)), 4))
    if not layers:
        ax.text(0.5, 0.5, f"quantize.mode {sensitivity['mode']}: no per-op sensitivity measured",
                ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    precisions = sorted({p for layer in layers for p in layer["validation_error"]})
    width = 0.8 / len(precisions)
    for i, precision in enumerate(precisions):
        xs = [j + i * width for j in range(len(layers))]
        ax.bar(xs, [layer["validation_error"].get(precision, 0.0) for layer in layers],
               width=width, label=f"only this op {precision}")
    ax.axhline(sensitivity["fp32_validation_error"], color="black", linestyle="--", label="fp32")
    ax.set_xticks([j + width * (len(precisions) - 1) / 2 for j in range(len(layers))])
    ax.set_xticklabels([f"{layer['layer']} {layer['op'].lower()}\n-> {layer['precision']}"
                        for layer in layers], rotation=45, ha="right")
    ax.set_ylabel("validation error")
    ax.set_title(f"Per-op quantization sensitivity (chosen: validation error "
                 f"{sensitivity['validation_error']:.3f})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def plot_pareto(trials: list[dict], budget: float, path: Path) -> None:
    """A search's measured trials: paired validation accuracy drop vs the teacher (bar: up to its
    upper confidence bound) against gzip size (log scale), latency as colour; the chosen trial
    starred, the Pareto front (bound vs objective) ringed, the gate's budget dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kib = [t["gzip_bytes"] / 1024 for t in trials]
    drops = [100 * t["drop"] for t in trials]
    ax.errorbar(kib, drops, yerr=[[0] * len(trials), [100 * t["upper"] - d
                                                      for t, d in zip(trials, drops)]],
                fmt="none", ecolor="grey", alpha=0.6, capsize=3)
    points = ax.scatter(kib, drops, s=50, cmap="viridis", c=[t["latency_p50_us"] for t in trials])
    fig.colorbar(points, ax=ax, label="latency p50 (µs)")
    for t, x, drop in zip(trials, kib, drops):
        if t["pareto"]:
            ax.scatter(x, drop, s=140, facecolors="none", edgecolors="black")
        if t["chosen"]:
            ax.scatter(x, drop, s=260, marker="*", color="red", label="chosen")
        ax.annotate(str(t["number"]), (x, drop), textcoords="offset points", xytext=(5, 3),
                    fontsize=7)
    ax.axhline(100 * budget, linestyle="--", color="grey", label="gate.max_accuracy_drop")
    ax.set_xscale("log")
    ax.set_xlabel("gzip size (KiB, log scale)")
    ax.set_ylabel("validation accuracy drop vs teacher (pt)")
    ax.set_title("Search: trials (bar: upper confidence bound; ringed: Pareto front)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
