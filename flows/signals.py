"""A stop signal always stops `shrinkflow run`: SIGTERM (how Kubernetes, systemd and Prefect
workers stop a job) or SIGINT (Ctrl-C), at any moment, ends the run and every process it started.

Two ways out, the second guaranteeing the first:

- The clean stop. SIGTERM raises `SystemExit(143)` and SIGINT `KeyboardInterrupt` wherever the
  run is; within the flow Prefect's own SIGTERM handler raises `TerminationSignal` first and, once
  the flow run is Crashed, sends the signal again to the handler it found (Python's default would
  kill the process there). The exception unwinds the run: its MLflow runs end KILLED, the
  workspace lock is released, the Dask cluster stops, and at exit Prefect stops its temporary
  server and `end_started_processes` ends whatever else is left.
- The hard stop, when the clean one cannot happen: a handler's exception is dropped when Python
  runs it within a finalizer or weakref callback (seen: an import lock's callback during start-up,
  a `__del__` in training; the run went on), or caught by a library's broad `except`, or the
  unwinding hangs. Every signal is also written, at the C level, to a wakeup fd that a watchdog
  thread reads, whoever's Python handler runs (Prefect's or ours) and whether or not its
  exception survives. A dropped exception's signal is sent again at once. `GRACE_S` after the
  first signal, or on a second one (not one this process sent itself), the watchdog runs the
  cleanups the run registered (`on_hard_stop`: MLflow runs KILLED, the flow run Crashed), ends
  every process the run started and exits with 128 + the signal: within 20 s in all.

"Every process the run started": each carries `RUN_ENV` in its environment (set before the first
child starts), so it is found even in a session of its own (the temporary server) or re-parented
to init, plus any descendant still attached to this process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

RUN_ENV = "SHRINKFLOW_RUN"  # "<pid>-<random>" of the run, in every process it starts
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 12.0  # after the first signal, for the clean stop (measured: 1-12 s; README)
CLAIM_S = 1.0  # a later signal within this of one the process sent itself is that one
HOOKS_S = 3.0  # the hard stop's time for the run's cleanups (MLflow, Prefect)
TERM_WAIT_S = 2.0  # for the processes the run started to end on SIGTERM, before SIGKILL
HARD_STOP_NOTE = (f"stopped by a signal, then hard by its own process (a second signal, or not "
                  f"ended {GRACE_S:.0f} s after the first): flows/signals.py")

_hooks: list[Callable[[], object]] = []
_guard: _Guard | None = None
_spawning = threading.Lock()  # held while a thread other than the main one starts a process
_ended = False  # the run has ended its processes: no new one may start


def stop_by_exception(signum: int, frame: FrameType | None) -> None:
    """SIGTERM's handler: unwind the run as Ctrl-C does, with exit code 128 + the signal."""
    if _guard and _sent_by_prefect(frame):
        _guard.expect_own_signal()
    raise SystemExit(128 + signum)


def _sent_by_prefect(frame: FrameType | None) -> bool:
    """Whether Prefect's engine sent this signal: once a TerminationSignal has Crashed its flow
    run, it sends the signal again to the handler it had replaced (this one), from
    `capture_sigterm` (prefect/utilities/engine), whose `os.kill` runs the handler before it
    returns. No second signal, then. Were Prefect to send it from elsewhere one day, the watchdog
    would take it for one: a hard stop, as clean but for the engine's own records."""
    while frame is not None:
        if frame.f_code.co_name == "capture_sigterm" and "prefect" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def guard_run() -> _Guard:
    """Make this process stop at any SIGTERM or SIGINT, with everything it starts (see above).
    For the `shrinkflow run` process, before its first child: for the rest of the process, not
    undone (a signal during the exit, while Prefect's server stops, must still be handled)."""
    global _guard
    if _guard is None:
        _guard = _Guard()
    return _guard


@contextmanager
def on_hard_stop(cleanup: Callable[[], object]) -> Iterator[None]:
    """Run `cleanup` (from another thread, given `HOOKS_S`) if the run is stopped hard within the
    block, or while an exception unwinds from it (a stop already under way). Harmless without
    `guard_run`: a flow run on a worker merely registers it."""
    _hooks.append(cleanup)
    yield
    _hooks.remove(cleanup)


@contextmanager
def starting_process() -> Iterator[None]:
    """Around starting a process from a thread other than the main one (the temporary server's
    start): it cannot start once the run has ended its processes, where it would be left running
    (seen: a SIGTERM at "Starting temporary server" ended the run before the server's fork)."""
    with _spawning:
        if _ended:
            raise RuntimeError("shrinkflow run is stopping: no new process")
        yield


def signal_of(exc: BaseException | None) -> int | None:
    """The signal an exception stands for: Prefect's TerminationSignal, Ctrl-C's
    KeyboardInterrupt, `stop_by_exception`'s SystemExit; None for any other."""
    prefect_exceptions = sys.modules.get("prefect.exceptions")  # not imported: none of Prefect's
    if prefect_exceptions and isinstance(exc, prefect_exceptions.TerminationSignal):
        return exc.signal
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
        return signal.SIGTERM
    return None


@contextmanager
def stop_kept() -> Iterator[None]:
    """Within: a stop signal's exception that another replaced while it unwound is raised again.
    A library's `__exit__` may raise on the way out (seen: TensorFlow's tf_stack, `AssertionError:
    Concurrent access?`, in training), and the stopped run would end as a failed one (exit 1,
    MLflow FAILED, flow run Failed)."""
    try:
        yield
    except Exception as exc:
        stop = _replaced_stop(exc)
        if stop is None:
            raise
        raise stop  # its context is `exc`: the traceback shows both


def _replaced_stop(exc: BaseException) -> BaseException | None:
    """The stop signal's exception in `exc`'s context chain, if any."""
    seen = {id(exc)}
    context = exc.__context__
    while context is not None and id(context) not in seen:
        if signal_of(context):
            return context
        seen.add(id(context))
        context = context.__context__
    return None


def send_dropped_signal_again(unraisable: sys.UnraisableHookArgs) -> None:
    """`sys.unraisablehook`: a signal handler's exception raised while Python ran a finalizer or
    weakref callback is printed and dropped; its signal is sent again, from another thread (sent
    from here, its handler would run, and raise, within the same callback)."""
    dropped = signal_of(unraisable.exc_value)
    if dropped:
        if _guard:
            _guard.expect_own_signal()
        threading.Timer(0.1, os.kill, (os.getpid(), dropped)).start()
    sys.__unraisablehook__(unraisable)


def started_processes(token: str) -> list[int]:
    """The live processes carrying `RUN_ENV=token`, and the descendants of this one."""
    me, marker = os.getpid(), f"{RUN_ENV}={token}".encode()
    children: dict[int, list[int]] = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            if fields[0] in "ZX":  # dead, not yet reaped
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except (OSError, IndexError):  # gone meanwhile, or another user's
            continue
    todo = [me]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return sorted(found - {me})


def end_started_processes(token: str, wait_s: float = TERM_WAIT_S) -> list[int]:
    """SIGTERM every process the run started, SIGKILL those still alive after `wait_s`; from then
    on none starts (`starting_process`). Returns the pids found."""
    global _ended
    with _spawning:
        _ended = True
    found = started_processes(token)
    _send(found, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    alive = found
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    _send(alive, signal.SIGKILL)
    return found


class _Guard:
    """The handlers, the wakeup fd and the watchdog thread of `guard_run`."""

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-{os.urandom(4).hex()}"
        os.environ[RUN_ENV] = self.token
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)  # the C handler must never block
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop_by_exception)
        # SIGINT keeps Python's KeyboardInterrupt (left ignored if it was: `nohup`, `&`)
        sys.unraisablehook = send_dropped_signal_again
        self._lock = threading.Lock()
        self._own: list[float] = []  # when this process sent itself a signal (not yet read)
        threading.Thread(target=self._watch, name="shrinkflow-stop", daemon=True).start()

    def expect_own_signal(self) -> None:
        with self._lock:
            self._own.append(time.monotonic())

    def end_started(self) -> list[int]:
        """At exit: what the run started and did not stop (what Prefect's atexit and the Dask
        runner stopped is gone by then)."""
        return end_started_processes(self.token)

    def _watch(self) -> None:
        first: tuple[int, float] | None = None
        unclaimed: list[tuple[int, float]] = []  # later signals, maybe this process's own
        while True:
            waits = [first[1] + GRACE_S] if first else []
            waits += [at + CLAIM_S for _, at in unclaimed[:1]]
            self._read.settimeout(max(0.0, min(waits) - time.monotonic()) if waits else None)
            try:
                received = self._read.recv(64)
            except TimeoutError:
                received = b""
            now = time.monotonic()
            for signum in received:
                if signum not in STOP_SIGNALS:
                    continue
                if first is None:
                    first = (signum, now)
                else:
                    unclaimed.append((signum, now))
            with self._lock:  # a signal is this process's own if it sent one then
                for late in list(unclaimed):
                    own = next((at for at in self._own if abs(at - late[1]) <= CLAIM_S), None)
                    if own is not None:
                        self._own.remove(own)
                        unclaimed.remove(late)
            if unclaimed and now >= unclaimed[0][1] + CLAIM_S:
                self._hard_stop(unclaimed[0][0], f"a second {signal.Signals(unclaimed[0][0]).name}")
            if first and now >= first[1] + GRACE_S:
                self._hard_stop(first[0], f"still running {GRACE_S:.0f} s after "
                                          f"{signal.Signals(first[0]).name}")

    def _hard_stop(self, signum: int, why: str) -> NoReturn:
        """The run's cleanups, each in a thread of its own, then every process it started; exit.
        os.write, not print: the main thread may hold stderr's lock."""
        os.write(2, f"shrinkflow: {why}: stopping hard, ending what the run started\n".encode())
        threads = [threading.Thread(target=_quietly, args=(hook,), daemon=True)
                   for hook in list(_hooks)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + HOOKS_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        end_started_processes(self.token)
        os._exit(128 + signum)


def _quietly(hook: Callable[[], object]) -> None:
    try:
        hook()
    except BaseException as exc:  # noqa: BLE001 (the hard stop goes on; says why)
        os.write(2, f"shrinkflow: cleanup {hook} failed: {type(exc).__name__}: {exc}\n".encode())


def _send(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"
