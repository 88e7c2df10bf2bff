"""The model card that travels with the deployable model (`model_card.md` beside its .tflite in the
registered model, the run's artifacts and the Prefect report): what it is, what it was made from
and measured on, and how it was made. The registry appends the gate's verdict
(flows/record/registry.py).
"""

from __future__ import annotations

from flows.record.gated import drop_metrics
from flows.record.report import markdown_table, paired_line, slowest_line, summary_rows
from flows.record.tracking import SPLITS
from tasks.artifacts import Workspace
from tasks.choice import chosen_params, search_summary
from tasks.config import Params
from tasks.measurements import RunMetrics
from tasks.splits import Dataset

# The keys of the recipe, as `--set` spells them (with the search's choice applied)
RECIPE = {"sparsify": ("enabled", "pattern", "final_sparsity", "allocation", "epochs"),
          "distill": ("enabled", "width", "init", "activations", "blocks", "downsample",
                      "temperature", "alpha", "epochs"),
          "quantize": ("enabled", "mode", "calibration_samples", "qat_epochs")}


def model_card(params: Params, ws: Workspace, metrics: RunMetrics, student: str | None) -> str:
    """The card's markdown for the run's model; `metrics` is its metrics.json, `student` what the
    derived student changed in the teacher (tasks/friendly.py `student_changes`)."""
    data, recipe = Dataset.load(ws.data), chosen_params(params, ws)
    return "\n".join([
        f"# Model card: `{params.gate.registered_model}`", "",
        _what_it_is(params, recipe, data, metrics), "",
        "## Data", "",
        f"`{params.data.source}`; MD5 of every value of each split (as the MLflow run's datasets):",
        "",
        *(f"- {SPLITS[name]}: {len(split):,} samples, `{split.digest}`"
          for name, split in data.splits.items()),
        *(f"- unlabeled, {name} (`{params.data.unlabeled}`): {len(part):,} inputs, `{part.digest}`"
          for name, part in (data.pool.parts.items() if data.pool else ())), "",
        "## Measured on the test split", "",
        f"- {paired_line(drop_metrics('drop', metrics.paired), 'drop', 'vs the teacher')}",
        f"- budget `gate.max_accuracy_drop`: {100 * params.gate.max_accuracy_drop:.2f} pt",
        f"- vs the teacher: {metrics.slowdown.describe('the teacher')}",
        *([f"- {slowest_line(metrics.slowest_ops, metrics.slowdown.threads)}"]
          if metrics.slowest_ops else []), "",
        markdown_table(summary_rows(metrics)), "",
        ("Latency: batch 1, LiteRT with XNNPACK; runtime memory: the heap the interpreter holds "
         "(tensor arena, packed weights), not counting the model file."), "",
        "## Recipe", "",
        *_recipe(recipe, search_summary(ws), student),
    ]) + "\n"


def _what_it_is(params: Params, recipe: Params, data: Dataset, metrics: RunMetrics) -> str:
    quantize = recipe.quantize
    shape = "×".join(str(d) for d in data.input_shape)
    return (f"A TFLite {data.task.model_kind} ({quantize.mode if quantize.enabled else 'fp32'}) "
            f"of {data.num_classes} {data.task.outputs_are} over inputs of shape {shape} "
            f"(float32), judged by {data.task.metric}, "
            f"compressed by shrinkflow from the teacher (`model.source: {params.model.source}`, "
            f"{metrics.teacher.params:,} params) into a student of "
            f"{metrics.final.params:,} params.")


def _recipe(recipe: Params, search: str | None, student: str | None) -> list[str]:
    """One line per stage's keys (`recipe`: the search's choice applied), what the derived
    student changed in the teacher's architecture, and the search's summary."""
    return [f"- {section}: " + ", ".join(f"{key} {getattr(getattr(recipe, section), key)}"
                                        for key in keys) for section, keys in RECIPE.items()
            ] + ([f"- student: {student}"] if student else []) + (
                [f"- search: {search}"] if search else [])
