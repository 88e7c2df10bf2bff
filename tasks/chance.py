"""Chance: what a model scores by always answering the most frequent answer of a split, and
whether a model's accuracy is above it beyond noise (one-sided exact binomial test). A teacher at
chance is refused before any training (tasks/load.py): a student would copy noise, and a drop
measured against it means nothing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from tasks.task import Task


@dataclass(frozen=True)
class Chance:
    """The most frequent answer among a split's labels (a class, or a row of labels) and its
    share of them (tasks/task.py `Task.chance`)."""

    answer: np.ndarray
    rate: float

    @classmethod
    def of(cls, task: Task, labels: np.ndarray) -> Chance:
        return cls(*task.chance(labels))

    def beaten(self, right: int, n: int, confidence: float) -> bool:
        """Whether `right` correct answers of `n` are more than chance gives, beyond noise: at
        most a 1 - `confidence` chance that always answering `answer` would score as many."""
        return bool(binom.sf(right - 1, n, self.rate) < 1 - confidence)

    def describe(self, right: int, n: int) -> str:
        answer = (f"class {self.answer}" if self.answer.ndim == 0 else
                  f"labels {self.answer.tolist()}")
        return (f"{100 * right / n:.2f} % on the {n:,} test samples, no better beyond noise "
                f"than chance ({100 * self.rate:.2f} %: always answering {answer})")
