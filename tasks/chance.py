"""Chance: what a classifier scores by always answering the most frequent class of a split, and
whether a model's accuracy is above it beyond noise (one-sided exact binomial test). A teacher at
chance is refused before any training (tasks/load.py): a student would copy noise, and a drop
measured against it means nothing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class Chance:
    """The most frequent class of a split's labels and its share of them."""

    label: int
    rate: float

    @classmethod
    def of(cls, labels: np.ndarray) -> Chance:
        counts = np.bincount(labels)
        return cls(int(counts.argmax()), float(counts.max() / len(labels)))

    def beaten(self, right: int, n: int, confidence: float) -> bool:
        """Whether `right` correct answers of `n` are more than chance gives, beyond noise: at
        most a 1 - `confidence` chance that always answering `label` would score as many."""
        return bool(binom.sf(right - 1, n, self.rate) < 1 - confidence)

    def describe(self, right: int, n: int) -> str:
        return (f"{100 * right / n:.2f} % on the {n:,} test samples, no better beyond noise "
                f"than chance ({100 * self.rate:.2f} %: always answering class {self.label})")
