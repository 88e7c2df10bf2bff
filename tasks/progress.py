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

# Told the share of training done and the samples per second since it began, within epochs, at
# most every BATCH_SECONDS: long epochs move the flow's progress bar too.
BatchListener = Callable[[float, float], None]
batch_listener: ContextVar[BatchListener | None] = ContextVar("batch_listener", default=None)
BATCH_SECONDS = 10.0
