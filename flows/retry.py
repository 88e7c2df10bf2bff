"""What Prefect retries in a run: only failures that may pass on their own, never bad input."""

from __future__ import annotations

from typing import Any

import requests
from prefect.tasks import exponential_backoff

from tasks.errors import InputChanged

TRANSIENT = (
    InputChanged,  # an input file still being written by the job that produces it
    ConnectionError,
    TimeoutError,
    requests.exceptions.ConnectionError,  # MLflow's client, under its own MlflowException
    requests.exceptions.Timeout,
)


def is_transient(error: BaseException | None) -> bool:
    """`error`, or an error it was raised from or while handling, may pass if tried again."""
    while error is not None:
        if isinstance(error, TRANSIENT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _failed_transiently(task: Any, task_run: Any, state: Any) -> bool:
    return is_transient(state.result(raise_on_failure=False))


# Up to three more tries, 10 s, 20 s and 40 s later.
RETRY_POLICY: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_condition_fn": _failed_transiently,
}
