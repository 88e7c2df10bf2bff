"""Training progress for whoever listens, without TensorFlow: the flow imports this for every stage,
the training code (tasks/models.py) only when a stage really trains."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

# Told the share of epochs done, in (0, 1], and the epoch's Keras logs (loss, val_* metrics)
# after every epoch of `fit`. The flow layer sets it to move a progress bar, a search trial to
# stop hopeless training early (by raising); the compute layer stays free of any orchestrator.
EpochListener = Callable[[float, dict[str, float]], None]
epoch_listener: ContextVar[EpochListener | None] = ContextVar("epoch_listener", default=None)
