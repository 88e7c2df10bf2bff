"""flows/signals.py with real signals on small processes (no TensorFlow, no Prefect): a stop
signal stops a guarded process, with every process it started, even when the signal's exception is
dropped by Python or swallowed by the code it interrupts, and a second signal stops it at once;
a stop's exception replaced by another while it unwinds is raised again.
The same with real runs: tests/test_killed_runs.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO, TEST_MARK, wait_until_none_with_mark

from flows.signals import GRACE_S, stop_kept

STARTS_CHILDREN = """
import os, signal, subprocess, sys, time
from flows.signals import guard_run, on_hard_stop
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the tests
# run where SIGINT is inherited ignored (a `&` job of a script, nohup): the guard leaves it so
guard = guard_run()
subprocess.Popen(["sleep", "300"], start_new_session=True)  # as the temporary Prefect server
subprocess.Popen(["sh", "-c", "sleep 300 & exit 0"])  # its child is re-parented to init
"""
SWALLOWS = STARTS_CHILDREN + """
with on_hard_stop(lambda: open("cleaned-up", "w").close()):
    ready = False
    while True:
        try:
            if not ready:  # within the try: a signal right after it is swallowed too
                print("ready", flush=True)
                ready = True
            time.sleep(60)
        except BaseException:  # as a library's broad `except` might
            pass
"""
DROPS = STARTS_CHILDREN + """
class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # its handler raises here, in a finalizer: dropped

print("ready", flush=True)
try:
    Finalized()
    time.sleep(60)
finally:
    guard.end_started()  # as `shrinkflow run` at exit
"""


def start(script: str, cwd, mark: str) -> subprocess.Popen:
    env = os.environ | {TEST_MARK: mark, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == "ready\n", process.communicate()[1]
    return process


@pytest.mark.parametrize("second", [None, signal.SIGINT], ids=["one signal", "a second signal"])
def test_a_stop_signal_swallowed_by_the_code_still_stops_the_process_and_its_children(
        second, tmp_path):
    """The signal's exception is caught and ignored: the process stops hard GRACE_S after it,
    or as soon as a second signal comes, after its cleanups, with every process it started."""
    mark = uuid.uuid4().hex
    process = start(SWALLOWS, tmp_path, mark)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    if second:
        time.sleep(0.5)
        process.send_signal(second)
    err = process.communicate(timeout=GRACE_S + 10)[1]
    took = time.monotonic() - sent
    assert process.returncode == 128 + (second or signal.SIGTERM), err
    if second:
        assert took < 5 and "a second SIGINT: stopping hard" in err, (took, err)
    else:
        assert GRACE_S - 1 < took < GRACE_S + 5, took
        assert f"still running {GRACE_S:.0f} s after SIGTERM: stopping hard" in err, err
    assert (tmp_path / "cleaned-up").exists()
    assert not wait_until_none_with_mark(mark)


def test_a_stop_signal_dropped_in_a_finalizer_is_sent_again(tmp_path):
    """Python prints and drops a handler's exception raised while a `__del__` or weakref callback
    runs (seen: a SIGTERM ignored in training, and in an import lock's callback at start-up).
    The signal is sent again, and the process stops cleanly, long before the hard stop."""
    mark = uuid.uuid4().hex
    process = start(DROPS, tmp_path, mark)
    err = process.communicate(timeout=GRACE_S + 10)[1]
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Exception ignored in" in err and "SystemExit: 143" in err, err
    assert "stopping hard" not in err
    assert not wait_until_none_with_mark(mark)


class RaisesOnExit:
    """As TensorFlow's tf_stack when a signal's exception leaves it mid-way."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info) -> None:
        raise AssertionError("Concurrent access?")


@pytest.mark.parametrize("stop", [SystemExit(128 + signal.SIGTERM), KeyboardInterrupt()],
                         ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_replaced_while_it_unwinds_is_raised_again(stop):
    """The run ends stopped (exit 143, MLflow KILLED, flow run Crashed), not failed."""
    with pytest.raises(type(stop)) as raised, stop_kept(), RaisesOnExit():
        raise stop
    assert raised.value is stop
    assert isinstance(raised.value.__context__, AssertionError)


def test_an_error_without_a_stop_in_its_context_is_left_alone():
    with pytest.raises(AssertionError), stop_kept(), RaisesOnExit():
        raise ValueError("an error of the run's own")
