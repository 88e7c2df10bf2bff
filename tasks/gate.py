"""The promotion gate: does a new model deserve the `champion` alias? Pure logic, no registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks.config import GateConfig
from tasks.paired import PairedDrop
from tasks.paired import uncertifiable as paired_uncertifiable

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)


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


def judge(cfg: GateConfig, candidate: dict, teacher_drop: PairedDrop, champion: dict | None,
          champion_drop: PairedDrop | None) -> Decision:
    """`candidate` and `champion` hold the evaluator's accuracy, gzip_bytes and latency_p50_us,
    measured on the same test split; `teacher_drop` is the candidate's paired drop vs the teacher
    and `champion_drop` its paired drop vs the champion (reference: the champion), both on it.

    The rules, in order (bounds at cfg.confidence, tasks/paired.py):
    - the upper bound of `teacher_drop` must be within gate.max_accuracy_drop (a point drop
      within it is not enough: on a few hundred samples it is a sample or two);
    - the champion must not be more accurate beyond noise: the lower bound of `champion_drop`
      above 0 refuses; a difference within noise is no reason to keep the champion;
    - then the objective: smaller gzip or lower latency; or, for more_accurate, a higher accuracy
      (point estimate; it implies the above, as the lower bound never exceeds the estimate), ties
      broken by the smaller gzip.
    """
    if not teacher_drop.within(cfg.max_accuracy_drop):
        warning = uncertifiable(cfg, teacher_drop.n)
        return Decision(False, f"{teacher_drop.describe()} exceeds gate.max_accuracy_drop "
                               f"{100 * cfg.max_accuracy_drop:.2f} pt"
                               + (f"; {warning}" if warning else ""))
    if champion is None:
        return Decision(True, "first model within the accuracy gate")
    if champion_drop.lower > 0:
        return Decision(False, f"accuracy {100 * candidate['accuracy']:.2f} % is below the "
                               f"champion's {100 * champion['accuracy']:.2f} % beyond noise: "
                               f"{champion_drop.describe(bound='lower')}")
    if cfg.objective == "more_accurate":
        better = candidate["accuracy"] > champion["accuracy"] or (
            candidate["accuracy"] == champion["accuracy"]
            and candidate["gzip_bytes"] < champion["gzip_bytes"]
        )
        return _verdict(better, "accuracy", candidate, champion)
    key = "gzip_bytes" if cfg.objective == "smaller_gzip" else "latency_p50_us"
    return _verdict(candidate[key] < champion[key], key, candidate, champion)


def uncertifiable(cfg: GateConfig, test_samples: int) -> str | None:
    """Why `test_samples` paired samples cannot certify gate.max_accuracy_drop, and the ways out;
    None when they can. Only a model more accurate than the teacher on them could pass."""
    reason = paired_uncertifiable(test_samples, cfg.max_accuracy_drop, cfg.confidence)
    return reason and (f"the test split's {reason} (gate.max_accuracy_drop, gate.confidence), so "
                       "the gate refuses every model not more accurate than the teacher; use more "
                       "test samples (data.test_fraction, or x_test in the npz), raise "
                       "gate.max_accuracy_drop, or lower gate.confidence")


def warn_if_uncertifiable(cfg: GateConfig, test_samples: int) -> None:
    """The pre-check, once the test split's size is known and before any training: a warning,
    not an error (the run goes on, and the gate refuses its model)."""
    warning = uncertifiable(cfg, test_samples)
    if warning:
        log.warning("gate: %s", warning)


def _verdict(better: bool, key: str, candidate: dict, champion: dict) -> Decision:
    comparison = f"{key} {candidate[key]:g} vs champion {champion[key]:g}"
    return Decision(better, f"beats the champion: {comparison}" if better
                    else f"does not beat the champion: {comparison}")
