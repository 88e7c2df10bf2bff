"""distill.width `auto`: the smallest student of the ladder (tasks/students.py
`student_ladder`) likely to pass the gate, found by probing few rungs (`smallest_within`), each
probe the first part of a distillation (tasks/teaching.py) judged on validation (and on the
unlabeled pool's choose part) against the gate's rule (tasks/power.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tf_keras as keras

from tasks.config import DistillConfig, GateConfig, SparsifyConfig
from tasks.evaluate import model_answers
from tasks.fidelity import fidelity
from tasks.friendly import BLOCKS_KEPT, DOWNSAMPLE_ORDER
from tasks.gate import RuleChoice, rule_for
from tasks.models import seed_everything
from tasks.paired import PairedDrop, paired_drop
from tasks.power import CONFIRMED, chance_to_certify, chance_to_pass
from tasks.splits import Dataset
from tasks.students import Rung, derive_student, student_ladder
from tasks.teaching import Distillation, soft_targets

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)

# distill.width `auto`: a probe is this share of the distillation, judged once at its end
# (docs/decisions.md: traced on digits, a probe's chance after a third of its epochs agreed with
# its chance at the end about as often as a later epoch's did: each is one noisy look).
PROBE_SHARE = 1 / 3


@dataclass(frozen=True)
class Probe:
    """One rung width `auto` tried: its student's paired drop vs the teacher on validation
    after the probe's epochs, its chance to pass the gate, and those epochs."""

    drop: PairedDrop
    chance: float
    epochs: int


class AutoWidth(NamedTuple):
    """What distill.width `auto` chose: the rung, its student trained on all of the epochs,
    every probe, and the epochs trained in all (probes and the trained-on rest)."""

    rung: Rung
    student: keras.Model
    probes: dict[Rung, Probe]
    epochs: int


def smallest_likely(
    teacher: keras.Model, data: Dataset, cfg: DistillConfig, sparsify_cfg: SparsifyConfig,
    gate: GateConfig, seed: int,
) -> AutoWidth:
    """distill.width `auto`: the smallest student of the ladder (`student_ladder`: the teacher's
    widths, with distill.blocks `auto` each with each choice of blocks) that is likely to pass
    the gate: its chance of passing the gate's rule on the test split, from its
    paired counts vs the teacher on the validation split, at least CONFIRMED (tasks/power.py: the
    search's final choice needs as much; measured on digits, LIKELY let the search's last
    probes, each as close to the teacher on 144 samples, narrow to a student 1.1 pt worse on
    test). With data.unlabeled, a probe's disagreement with the teacher on the pool's choose part
    counts too: its chance is the greater of the two. Each probe is the first PROBE_SHARE of a
    distillation, judged once at its end; the chosen one then trains on to all of `cfg.epochs`
    (a second look at a near miss trained on instead was refused: docs/decisions.md)."""
    ladder = student_ladder(teacher, cfg, sparsify_cfg)
    rule = rule_for(gate, data)
    if cannot_narrow(rule, len(data.val), len(data.pool.choose) if data.pool else 0):
        ladder = ladder[:1]
    targets = soft_targets(teacher, data)
    teacher_right = data.task.right(data.task.answers(targets.val), data.val.labels)
    teacher_choice = chosen_answers(teacher, data)
    probe_epochs = math.ceil(PROBE_SHARE * cfg.epochs)
    runs: dict[Rung, Distillation] = {}
    probes: dict[Rung, Probe] = {}

    def measure(student: keras.Model) -> tuple[PairedDrop, float, str]:
        right = data.task.right(model_answers(data.task, student.predict, data.val),
                                data.val.labels)
        drop = paired_drop(teacher_right, right, gate.confidence)
        chance, found = chance_to_pass(rule.rule, drop.worse, drop.better, drop.n), drop.describe()
        if teacher_choice is not None:  # fidelity on the pool's choose part can certify too
            agree = fidelity(teacher_choice, chosen_answers(student, data), gate.confidence)
            chance = max(chance, chance_to_certify(rule.rule, agree.disagree, agree.n))
            found += f"; choose part: {agree.describe()}"
        return drop, chance, found

    def likely(rung: Rung) -> bool:
        seed_everything(seed)
        student = derive_student(teacher, rung.width, cfg.init, cfg.activations, rung.blocks,
                                 rung.downsample)
        run = runs[rung] = Distillation(teacher, student, data, cfg, sparsify_cfg,
                                        targets).train(probe_epochs)
        drop, chance, found = measure(run.model)
        probes[rung] = Probe(drop, chance, run.epochs)
        log.info("distill.width auto: %s %s after %d of %d epochs (chance %.2f to pass the "
                 "gate): validation %s", _named(rung),
                 "likely" if chance >= CONFIRMED else "unlikely", run.epochs, cfg.epochs,
                 chance, found)
        return chance >= CONFIRMED

    rung = smallest_within(ladder, likely)
    chosen = runs[rung].train(cfg.epochs)
    _, chance, found = measure(chosen.model)
    epochs = sum(run.epochs for run in runs.values())
    log.info("distill.width auto: %s trained on to %d epochs (chance %.2f): validation %s; %d "
             "probes, %d epochs trained in all", _named(rung), chosen.epochs, chance, found,
             len(probes), epochs)
    return AutoWidth(rung, chosen.student(), probes, epochs)


def _named(rung: Rung) -> str:
    """`0.25`, or with what it changes: `0.25 blocks fewest downsample early`."""
    return " ".join([f"{rung.width:g}", *[f"{key} {value}" for key, value, kept in (
        ("blocks", rung.blocks, "all"), ("downsample", rung.downsample, "keep"))
        if value != kept]])


def chosen_answers(model: keras.Model, data: Dataset) -> np.ndarray | None:
    """`model`'s answers on the unlabeled pool's choose part; None without a pool."""
    return model_answers(data.task, model.predict, data.pool.choose) if data.pool else None


def cannot_narrow(rule: RuleChoice, validation_samples: int, choose_inputs: int = 0) -> bool:
    """Whether even a student that agrees with the teacher on every validation sample (and every
    input of the pool's choose part) would be unlikely to pass the gate (`certified` on a test
    split too small for it): distill.width `auto` then distills the widest width alone, warned:
    probing narrower ones would only cost distillations."""
    if max(chance_to_pass(rule.rule, 0, 0, validation_samples),
           chance_to_certify(rule.rule, 0, choose_inputs)) >= CONFIRMED:
        return False
    log.warning("distill.width auto: no student is likely to pass the gate (%s within %.2f pt on "
                "%d test samples), so the widest of the teacher's widths is distilled alone",
                rule.rule.require, 100 * rule.rule.budget, rule.rule.n)
    return True


def smallest_within(ladder: list[Rung], within: Callable[[Rung], bool]) -> Rung:
    """The smallest of `ladder` (largest first) that is `within`, asking few rungs. Assumes a
    rung that `covers` another is within when the other is, not that any larger rung is: ResNet50
    at 0.177 without its identity blocks came out worse than at 0.125 with them, though larger
    (docs/benchmarks.md). Each question asks the open rung (`_open`) whose answer, either way,
    settles most open rungs, the smaller on ties (it trains faster): on one choice of blocks,
    bisection. None is within: the first, asked then (no other rung covers it)."""
    answers: dict[Rung, bool] = {}
    kept: Rung | None = None
    while candidates := _open(ladder, answers, kept):
        rung = max(reversed(candidates), key=lambda asked: min(  # settled if within, if not
            candidates.index(asked) + 1, sum(covers(asked, other) for other in candidates)))
        answers[rung] = within(rung)
        kept = rung if answers[rung] else kept
    return kept or ladder[0]


def covers(larger: Rung, smaller: Rung) -> bool:
    """Whether `larger` is at least as wide as `smaller`, keeps every block it keeps and
    downsamples no earlier."""
    return (larger.width >= smaller.width
            and BLOCKS_KEPT.index(larger.blocks) <= BLOCKS_KEPT.index(smaller.blocks)
            and DOWNSAMPLE_ORDER.index(larger.downsample)
            <= DOWNSAMPLE_ORDER.index(smaller.downsample))


def _open(ladder: list[Rung], answers: dict[Rung, bool], kept: Rung | None) -> list[Rung]:
    """The rungs of `ladder` smaller than `kept` (the smallest within so far) that no rung
    found not within `covers`."""
    smaller = ladder[ladder.index(kept) + 1:] if kept else ladder
    return [rung for rung in smaller
            if not any(covers(out, rung) for out, within in answers.items() if not within)]
