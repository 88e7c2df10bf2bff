"""The distill stage: knowledge distillation from the dense teacher into a (narrower, sparse)
student — derived from the teacher (tasks/students.py) at distill.width, or at the width `auto`
chooses (tasks/auto_width.py), or a distill.student file — taught by tasks/teaching.py."""

from __future__ import annotations

import tf_keras as keras

from tasks.artifacts import Workspace, copy_file
from tasks.auto_width import smallest_likely
from tasks.config import DistillConfig, GateConfig, SparsifyConfig
from tasks.inputs import distill_inputs, read_steadily
from tasks.models import overall_sparsity, read_model, seed_everything, write_model
from tasks.splits import Dataset
from tasks.students import derive_student
from tasks.teaching import distill


def run_distill(
    seed: int, cfg: DistillConfig, sparsify_cfg: SparsifyConfig, gate: GateConfig, ws: Workspace,
    trust_code: bool = False,
) -> dict[str, float]:
    """Stage: (teacher, sparse model) -> student. Disabled: the sparse model, unchanged. After a
    search: its chosen trial's student, trained there with the chosen keys (not trained twice).

    A width-scaled student is derived from the dense teacher, not the sparse model: measured
    (README, Benchmarks) it did as well or better, and the sparse model's damage is not inherited.

    `gate`: the rule distill.width `auto` aims its students at. `trust_code`
    (model.trust_code) lets a distill.student file with Lambda layers or custom objects load."""
    if not cfg.enabled:
        copy_file(ws.sparse, ws.student)
        return {}
    if ws.searched_student.exists():
        copy_file(ws.searched_student, ws.student)
        return _student_metrics(read_model(ws.student))
    seed_everything(seed)
    teacher, data = read_model(ws.teacher), Dataset.load(ws.data)
    if cfg.width == "auto" and not cfg.student:
        auto = smallest_likely(teacher, data, cfg, sparsify_cfg, gate, seed)
        write_model(auto.student, ws.student)
        return _student_metrics(auto.student) | {
            "student_width": auto.rung.width, "width_probes": len(auto.probes),
            "width_probe_epochs": sum(probe.epochs for probe in auto.probes.values()),
            "distill_epochs": auto.epochs}
    if cfg.student:
        with read_steadily(distill_inputs(cfg)):
            student = read_model(cfg.student, "distill.student", trust_code)
    elif cfg.width == 1.0:
        student = read_model(ws.sparse)
    else:
        student = derive_student(teacher, cfg.width, cfg.init, cfg.activations, cfg.blocks,
                                 cfg.downsample)
    student = distill(teacher, student, data, cfg, sparsify_cfg)
    write_model(student, ws.student)
    return _student_metrics(student)


def _student_metrics(student: keras.Model) -> dict[str, float]:
    return {"student_params": student.count_params(), "student_sparsity": overall_sparsity(student)}
