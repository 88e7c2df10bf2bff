"""Where each stage reads and writes, and how: every write goes to a temp file renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Workspace:
    """The artifact layout under a project directory (the same paths `dvc.yaml` lists)."""

    root: Path = Path(".")

    @property
    def data(self) -> Path:
        """The splits' manifest (tasks/splits.py): the user's data is never copied."""
        return self.root / "artifacts" / "splits.json"

    @property
    def teacher(self) -> Path:
        return self.root / "artifacts" / "teacher.h5"

    @property
    def chosen(self) -> Path:
        """The search's choice: the keys it sets for the stages after it (empty: none)."""
        return self.root / "artifacts" / "chosen.json"

    @property
    def search(self) -> Path:
        """The search's record: trials.json, pareto.png and the chosen trial's student."""
        return self.root / "artifacts" / "search"

    @property
    def searched_student(self) -> Path:
        """The chosen trial's trained float student: the distill stage's output for the chosen
        keys, trained once (absent when the search is off or trained no trial)."""
        return self.search / "student.h5"

    @property
    def sparse(self) -> Path:
        return self.root / "artifacts" / "sparse.h5"

    @property
    def student(self) -> Path:
        return self.root / "artifacts" / "student.h5"

    @property
    def model(self) -> Path:
        """The deployable model, in quantize.mode."""
        return self.root / "artifacts" / "model.tflite"

    @property
    def predictions(self) -> Path:
        """Each candidate's predicted class per test sample (evaluate): the paired comparisons."""
        return self.root / "artifacts" / "predictions.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "metrics.json"

    @property
    def sparsity(self) -> Path:
        return self.root / "metrics" / "sparsity.json"

    @property
    def quant_sensitivity(self) -> Path:
        """Per-op validation error at each precision (measured for quantize.mode mixed)."""
        return self.root / "metrics" / "quant_sensitivity.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); rename it over `path` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def write_json(path: Path, document: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz file of named arrays (`np.load(path)[name]`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: no `.npz` appended
        np.savez_compressed(f, **arrays)


def copy_file(source: Path, target: Path) -> None:
    """`source` to `target`, atomically (a disabled stage passes its input on unchanged)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
