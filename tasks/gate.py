"""The promotion gate: does a new model deserve the `champion` alias? Pure logic, no registry."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config import GateConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Interface:
    """What a classifier is for: the shape of one input sample and its number of classes."""

    input_shape: tuple[int, ...]
    num_classes: int

    def __str__(self) -> str:
        return f"inputs {self.input_shape} / {self.num_classes} classes"


def not_comparable(cfg: GateConfig, champion: Interface, candidate: Interface) -> Decision | None:
    """A refusal when the champion was made for another task than the new model (its accuracy on
    this run's data would mean nothing); None when the two can be measured side by side."""
    if champion == candidate:
        return None
    name = cfg.registered_model
    return Decision(False, f"the champion of gate.registered_model {name!r} takes {champion}, "
                           f"this run's model {candidate}: not comparable; use a registered model "
                           f"name per task, e.g. --set gate.registered_model={name}-<task>")


def judge(cfg: GateConfig, candidate: dict, accuracy_drop: float, champion: dict | None) -> Decision:
    """`candidate` and `champion` hold the evaluator's accuracy, gzip_bytes and latency_p50_us,
    measured on the same test split."""
    if accuracy_drop > cfg.max_accuracy_drop:
        return Decision(False, f"accuracy drop {accuracy_drop:.4f} exceeds gate.max_accuracy_drop "
                               f"{cfg.max_accuracy_drop}")
    if champion is None:
        return Decision(True, "first model within the accuracy gate")
    if cfg.objective == "more_accurate":
        better = candidate["accuracy"] > champion["accuracy"] or (
            candidate["accuracy"] == champion["accuracy"]
            and candidate["gzip_bytes"] < champion["gzip_bytes"]
        )
        return _verdict(better, "accuracy", candidate, champion)
    key = "gzip_bytes" if cfg.objective == "smaller_gzip" else "latency_p50_us"
    if candidate["accuracy"] < champion["accuracy"]:
        return Decision(False, f"accuracy {candidate['accuracy']:.4f} is below the champion's "
                               f"{champion['accuracy']:.4f}")
    return _verdict(candidate[key] < champion[key], key, candidate, champion)


def _verdict(better: bool, key: str, candidate: dict, champion: dict) -> Decision:
    comparison = f"{key} {candidate[key]:g} vs champion {champion[key]:g}"
    return Decision(better, f"beats the champion: {comparison}" if better
                    else f"does not beat the champion: {comparison}")
