"""Splits as manifests: which samples of the user's data are train, validation and test, read a
batch at a time; and, where data.unlabeled gives one, the pool of inputs without labels in its two
parts (choose, certify). The load stage writes the manifest (artifacts/splits.json), never a copy
of the data: every stage opens the user's data again (tasks/sources.py) and reads the rows its
splits name. Inputs become float32 only a batch at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.artifacts import atomic_path
from tasks.sources import Arrays, Source
from tasks.task import Classification, Task, task_named

if TYPE_CHECKING:
    import tensorflow as tf  # imported by `batches`: reading a manifest needs numpy only

BATCH = 256  # samples per batch when predicting or checking: a bounded amount of memory
PREFETCH = 2  # batches tf.data reads ahead of training (AUTOTUNE's buffer may grow with RAM)
SPLITS = ("train", "val", "test")
POOL_PARTS = ("choose", "certify")


class Rows:
    """What labeled splits and unlabeled inputs share: `rows` of `source`, read a batch at a time.
    Subclasses are dataclasses with the fields `source` and `rows`."""

    source: Source
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.source.sample_shape

    def read(self, positions: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The inputs at `positions` (all by default: small sets only)."""
        return self.source.read(self.rows[positions])

    def chunks(self, size: int = BATCH) -> Iterator[np.ndarray]:
        """The inputs in order, `size` at a time."""
        for start in range(0, len(self), size):
            yield self.read(slice(start, start + size))

    def outputs(self, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`predict` of every chunk of inputs, concatenated (LiteRT's interpreter)."""
        return np.concatenate([predict(x) for x in self.chunks()])

    def sample_digests(self) -> list[bytes]:
        """The MD5 of every input as float32, in order (a streaming pass): which inputs are the
        same."""
        return [hashlib.md5(x.tobytes()).digest() for chunk in self.chunks() for x in chunk]

    def _inputs_md5(self):
        """The MD5 of every input as float32, each checked finite (a streaming pass: ValueError
        if not)."""
        md5 = hashlib.md5(f"{(len(self), *self.sample_shape)}float32".encode())
        for x in self.chunks():
            if not np.all(np.isfinite(x)):
                raise ValueError(
                    "contains NaN, inf or values beyond float32; clean or rescale them")
            md5.update(x.tobytes())
        return md5


@dataclass(frozen=True, eq=False)
class Split(Rows):
    """The samples of one split: `rows` of `source`, their labels (in memory) and the MD5 of
    every input and label (as MLflow's dataset digest, computed by the load stage)."""

    source: Source
    rows: np.ndarray
    labels: np.ndarray
    digest: str = ""

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Split:
        """A split of arrays in memory (`x` float32 inputs, `y` class ids or 0/1 label rows)."""
        return cls(Arrays.of(x), np.arange(len(y)), np.asarray(y, dtype=np.int64))

    def subset(self, positions: np.ndarray | slice) -> Split:
        return Split(self.source, self.rows[positions], self.labels[positions])

    def batches(self, batch_size: int, shuffle: bool = False,
                targets: np.ndarray | None = None) -> tf.data.Dataset:
        """A tf.data pipeline of (inputs, labels) batches, read and decoded in parallel and
        prefetched; `targets` (one row per sample) come after the labels in each target row, as
        distillation packs the teacher's logits (tasks/teaching.py unpacks them). Shuffled anew
        each epoch from TensorFlow's seed (the run's)."""
        import tensorflow as tf

        y = self.labels if targets is None else np.concatenate(
            [self.labels.reshape(len(self), -1).astype(np.float32), targets.astype(np.float32)],
            axis=1)
        positions = tf.data.Dataset.range(len(self))
        if shuffle:
            positions = positions.shuffle(len(self), reshuffle_each_iteration=True)

        def read(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.read(at), y[at]

        def load(at):
            x, labels = tf.numpy_function(read, [at], (tf.float32, tf.as_dtype(y.dtype)),
                                          stateful=False)
            return (tf.ensure_shape(x, (None, *self.sample_shape)),
                    tf.ensure_shape(labels, (None, *y.shape[1:])))

        batched = positions.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return batched.prefetch(PREFETCH)

    def measured(self) -> Split:
        """This split with its digest, each input checked finite (a streaming pass over it:
        ValueError if not)."""
        md5 = self._inputs_md5()
        md5.update(f"{self.labels.shape}{self.labels.dtype}".encode())
        md5.update(self.labels.tobytes())
        return replace(self, digest=md5.hexdigest())


@dataclass(frozen=True, eq=False)
class Unlabeled(Rows):
    """Inputs without labels: `rows` of `source` and the MD5 of every input (as a split's, for
    MLflow's dataset digest, computed by the load stage)."""

    source: Source
    rows: np.ndarray
    digest: str = ""

    def subset(self, positions: np.ndarray | slice) -> Unlabeled:
        return Unlabeled(self.source, self.rows[positions])

    def measured(self) -> Unlabeled:
        """These inputs with their digest, each checked finite (ValueError if not)."""
        return replace(self, digest=self._inputs_md5().hexdigest())


@dataclass(frozen=True)
class Pool:
    """The unlabeled pool (data.unlabeled) in two parts that share no input: `choose` for what
    selects (the search, distill.width auto), `certify` for the gate only, so that no input both
    chooses a model and vouches for it."""

    choose: Unlabeled
    certify: Unlabeled

    @property
    def parts(self) -> dict[str, Unlabeled]:
        return {name: getattr(self, name) for name in POOL_PARTS}


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits, and the unlabeled pool where there is one. The test split
    and the pool's certify part are never trained, calibrated or selected on."""

    train: Split
    val: Split
    test: Split
    # How many samples of each held-out split ("val", "test") the teacher gets wrong, measured by
    # the load stage: the gate's rule is decided from them before any training (tasks/gate.py).
    teacher_errors: dict[str, int] = field(default_factory=dict)
    pool: Pool | None = None
    task: Task = Classification()  # decided by the load stage (tasks/task.py `infer_task`)

    @property
    def num_classes(self) -> int:
        """How many classes (labels, for a 0/1 row per sample) the labels name."""
        if self.train.labels.ndim == 2:
            return self.train.labels.shape[1]
        return int(max(split.labels.max() for split in self.splits.values())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @property
    def splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in SPLITS}

    @property
    def memory_bytes(self) -> int:
        """The inputs a process that reads them holds in memory."""
        return sum(source.memory_bytes for source in self.sources)

    @property
    def sources(self) -> list[Source]:
        """Each split's source, once (splits of one array or folder share it), then the pool's."""
        parts = list(self.splits.values()) + list(self.pool.parts.values() if self.pool else [])
        return list({id(part.source): part.source for part in parts}.values())

    def for_selection(self) -> Dataset:
        """The validation split in the test split's place: what a search measures its candidates
        on with the evaluator (which reads the test split), so the test split never chooses."""
        return replace(self, test=self.val)

    def save(self, path: Path) -> None:
        """The manifest: each source once, then each split's rows, labels and digest, then (with
        a pool) each pool part's rows and digest."""
        sources = self.sources
        manifest = {
            "sources": [source.manifest() for source in sources],
            "splits": {name: {"source": sources.index(split.source), "rows": split.rows.tolist(),
                              "labels": split.labels.tolist(), "digest": split.digest}
                       for name, split in self.splits.items()},
            "teacher_errors": self.teacher_errors,
            "task": {"name": self.task.name, "activation": self.task.activation},
        }
        if self.pool:
            manifest["pool"] = {name: {"source": sources.index(part.source),
                                       "rows": part.rows.tolist(), "digest": part.digest}
                                for name, part in self.pool.parts.items()}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(manifest))

    @classmethod
    def load(cls, path: Path) -> Dataset:
        manifest = json.loads(path.read_text())
        sources = [Source.from_manifest(spec) for spec in manifest["sources"]]
        splits = {name: Split(sources[entry["source"]], np.asarray(entry["rows"], np.int64),
                              np.asarray(entry["labels"], np.int64), entry["digest"])
                  for name, entry in manifest["splits"].items()}
        pool = manifest.get("pool")
        return cls(**splits, teacher_errors=manifest.get("teacher_errors", {}),
                   task=task_named(**manifest["task"]), pool=Pool(**{
            name: Unlabeled(sources[entry["source"]], np.asarray(entry["rows"], np.int64),
                            entry["digest"])
            for name, entry in pool.items()}) if pool else None)
