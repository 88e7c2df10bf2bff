"""The user's input files (data set, teacher, weights, student), and reading them only when steady.

Nightly jobs receive their inputs in place: a training job overwrites the teacher, a sync adds
images to a folder. A stage must not read a file that is still being written, nor record a file
that changed under it. `read_steadily` waits for a quiet period first and checks afterwards that
nothing moved; a change raises `InputChanged`, which the flow retries with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.config import DataConfig, DistillConfig, ModelConfig, Params
from tasks.errors import InputChanged

APPLICATIONS_PREFIX = "keras.applications."
BUILT_IN_MODELS = ("train",)
QUIET_SECONDS = 1.0  # a file modified more recently than this may still be being written
SETTLE_TIMEOUT_SECONDS = 600.0

Snapshot = dict[str, tuple[int, int]]  # file -> (size, mtime_ns)


def load_inputs(data: DataConfig, model: ModelConfig) -> dict[str, Path | None]:
    """The files the load stage reads, by config key; None where the source is built in or
    there is none."""
    builtin_model = model.source in BUILT_IN_MODELS or model.source.startswith(APPLICATIONS_PREFIX)
    return {
        "data.source": source_path(data.source),
        "data.unlabeled": source_path(data.unlabeled),
        "model.source": None if builtin_model else Path(model.source).expanduser(),
        "model.weights": Path(model.weights).expanduser() if model.weights else None,
    }


def source_path(source: str | None) -> Path | None:
    """The file or folder of a data source (`KIND:PATH`); None for `digits` or no source."""
    location = (source or "").partition(":")[2]
    return Path(location).expanduser() if location else None


def distill_inputs(cfg: DistillConfig) -> dict[str, Path | None]:
    """The file the distill stage reads beyond the pipeline's own artifacts."""
    return {"distill.student": Path(cfg.student).expanduser() if cfg.student else None}


def stage_inputs(params: Params) -> dict[str, dict[str, Path | None]]:
    """The user files each stage reads, by stage and config key."""
    return {"load": load_inputs(params.data, params.model), "distill": distill_inputs(params.distill)}


def snapshot(paths: list[Path]) -> Snapshot:
    """Size and modification time of every file under `paths` (folders walked, missing: empty)."""
    files = []
    for path in paths:
        files.extend([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else [])
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()}


@contextmanager
def read_steadily(files: dict[str, Path | None]) -> Iterator[None]:
    """Wait until no input has changed for `QUIET_SECONDS`, run the body, then raise
    `InputChanged` naming the key if any input changed while the body read it."""
    before = wait_until_settled(files)
    yield
    check_unchanged(files, before)


def wait_until_settled(files: dict[str, Path | None], quiet: float = QUIET_SECONDS,
                       timeout: float = SETTLE_TIMEOUT_SECONDS) -> Snapshot:
    """The inputs' snapshot once none has changed for `quiet` seconds (None: no file).

    Files last modified longer ago pass at once; a recent one (or one dated in the future, as a
    skewed clock on a shared mount makes it) must stay unchanged for `quiet` seconds.
    """
    files = _present(files)
    deadline = time.monotonic() + timeout
    state = snapshot(list(files.values()))
    newest = max((mtime for _, mtime in state.values()), default=0) / 1e9
    while time.time() - newest < quiet:
        if time.monotonic() + quiet > deadline:
            raise InputChanged(f"{', '.join(files)}: still being modified after {timeout:.0f} s; "
                               "run again once the writer has finished")
        time.sleep(quiet)
        previous, state = state, snapshot(list(files.values()))
        if state == previous:
            break
    return state


def check_unchanged(files: dict[str, Path | None], before: Snapshot) -> None:
    """Raise `InputChanged` naming the key and path of any input that differs from `before`."""
    for key, path in _present(files).items():
        prefix = str(path)
        old = {f: v for f, v in before.items() if f == prefix or f.startswith(prefix + "/")}
        if snapshot([path]) != old:
            raise InputChanged(f"{key}: {path} changed while it was being read (a writer still at "
                               "work?); nothing read from it was kept")


def _present(files: dict[str, Path | None]) -> dict[str, Path]:
    return {key: path for key, path in files.items() if path is not None}
