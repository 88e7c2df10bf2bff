"""Splits as manifests: which samples of the user's data are train, validation and test, read a
batch at a time. The load stage writes the manifest (artifacts/splits.json), never a copy of the
data: every stage opens the user's data again and reads the rows its splits name.

Sources: arrays (the built-in digits, an npz's arrays), held in memory in their stored dtype
(uint8 pixels stay uint8: a quarter of float32), and image folders, decoded and resized a batch at
a time in the tf.data pipeline, or decoded once per process when all of them fit in
data.cache_mb. Inputs become float32 only a batch at a time.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from tasks.artifacts import atomic_path
from tasks.errors import InputError

BATCH = 256  # samples per batch when predicting or checking: a bounded amount of memory
PREFETCH = 2  # batches tf.data reads ahead of training (AUTOTUNE's buffer may grow with RAM)
SPLITS = ("train", "val", "test")
_decoders = ThreadPoolExecutor(os.cpu_count() or 1)  # Pillow releases the GIL while decoding


@dataclass(frozen=True, eq=False)
class Source:
    """Where samples come from and how they become float32 inputs (stored / `divisor`).

    `kind`: digits (built in) | npz (`array` of the file at `path`) | images (`files` under the
    folder `path`, decoded to `size` (height, width), grayscale or RGB) | memory (arrays handed
    in by code: `Source.of`; not reopened from a manifest)."""

    kind: str
    path: str = ""
    array: str = ""
    files: tuple[str, ...] = ()
    size: tuple[int, int] = (0, 0)
    grayscale: bool = False
    divisor: float = 1.0
    cache_bytes: int = 0  # images: decoded up to this size they are held in memory

    @classmethod
    def of(cls, array: np.ndarray) -> Source:
        """An in-memory source for arrays handed in by code (tests, benchmarks)."""
        return cls("memory").holding(array)

    def holding(self, array: np.ndarray) -> Source:
        """This source with its samples already read: what `stored` would read."""
        self.__dict__["stored"] = array  # cached_property's own slot
        return self

    @cached_property
    def stored(self) -> np.ndarray | None:
        """Every sample as stored, in memory; None for images streamed from their files."""
        if self.kind == "digits":
            return read_digits()[0]
        if self.kind == "npz":
            with np.load(self.path, allow_pickle=False) as arrays:
                return arrays[self.array]
        if self.kind == "images" and self.decoded_bytes <= self.cache_bytes:
            return self._decode(range(len(self.files)))
        return None

    @property
    def decoded_bytes(self) -> int:
        return len(self.files) * self.size[0] * self.size[1] * (1 if self.grayscale else 3)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.kind == "images":
            return (*self.size, 1 if self.grayscale else 3)
        return tuple(self.stored.shape[1:])

    @property
    def memory_bytes(self) -> int:
        """What this source holds in memory in a process that reads it."""
        return 0 if self.stored is None else self.stored.nbytes

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The samples at `rows` as float32 inputs."""
        stored = self.stored
        x = stored[rows] if stored is not None else self._decode(rows)
        return x.astype(np.float32) / self.divisor  # float32 division: the bits of every stage

    def _decode(self, rows) -> np.ndarray:
        images = np.stack(list(_decoders.map(self._decode_one, (self.files[i] for i in rows))))
        return images[..., None] if self.grayscale else images

    def _decode_one(self, file: str) -> np.ndarray:
        path = Path(self.path) / file
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
                return np.asarray(image.resize(self.size[::-1]), dtype=np.uint8)  # PIL: (w, h)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"data.source: cannot read image {path} ({exc})") from exc


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (8x8 pixels 0-16, uint8) and labels, read from the file it ships
    without importing scikit-learn (seconds), as `load_digits` would."""
    package = Path(importlib.util.find_spec("sklearn").origin).parent
    with gzip.open(package / "datasets" / "data" / "digits.csv.gz") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 8, 8, 1).astype(np.uint8), table[:, -1]


@dataclass(frozen=True, eq=False)
class Split:
    """The samples of one split: `rows` of `source`, their labels (in memory) and the MD5 of
    every input and label (as MLflow's dataset digest, computed by the load stage)."""

    source: Source
    rows: np.ndarray
    labels: np.ndarray
    digest: str = ""

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Split:
        """A split of arrays in memory (`x` float32 inputs, `y` class ids)."""
        return cls(Source.of(x), np.arange(len(y)), np.asarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.source.sample_shape

    def read(self, positions: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The inputs at `positions` of this split (all by default: small splits only)."""
        return self.source.read(self.rows[positions])

    def subset(self, positions: np.ndarray | slice) -> Split:
        return Split(self.source, self.rows[positions], self.labels[positions])

    def chunks(self, size: int = BATCH) -> Iterator[np.ndarray]:
        """The inputs in order, `size` at a time."""
        for start in range(0, len(self), size):
            yield self.read(slice(start, start + size))

    def outputs(self, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`predict` of every chunk of inputs, concatenated (LiteRT's interpreter)."""
        return np.concatenate([predict(x) for x in self.chunks()])

    def batches(self, batch_size: int, shuffle: bool = False,
                targets: np.ndarray | None = None):
        """A tf.data pipeline of (inputs, labels) batches, read and decoded in parallel and
        prefetched; `targets` (one row per sample) come after the label in each target row, as
        distillation packs the teacher's logits. Shuffled anew each epoch from TensorFlow's
        seed (the run's)."""
        import tensorflow as tf

        y = self.labels if targets is None else np.concatenate(
            [self.labels[:, None].astype(np.float32), targets.astype(np.float32)], axis=1)
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
        md5 = hashlib.md5(f"{(len(self), *self.sample_shape)}float32".encode())
        for x in self.chunks():
            if not np.all(np.isfinite(x)):
                raise ValueError("contains NaN, inf or values beyond float32; clean or rescale them")
            md5.update(x.tobytes())
        md5.update(f"{self.labels.shape}{self.labels.dtype}".encode())
        md5.update(self.labels.tobytes())
        return replace(self, digest=md5.hexdigest())


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits. The test split is never trained, calibrated or selected on."""

    train: Split
    val: Split
    test: Split

    @classmethod
    def of(cls, *arrays: np.ndarray) -> Dataset:
        """From in-memory x_train, y_train, x_val, y_val, x_test, y_test (tests, benchmarks)."""
        return cls(*(Split.of(x, y) for x, y in zip(arrays[::2], arrays[1::2], strict=True)))

    @property
    def num_classes(self) -> int:
        return int(max(split.labels.max() for split in self.splits.values())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @property
    def splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in SPLITS}

    @property
    def memory_bytes(self) -> int:
        """The inputs a process that reads them holds in memory (each source once)."""
        sources = {id(split.source): split.source for split in self.splits.values()}
        return sum(source.memory_bytes for source in sources.values())

    def for_selection(self) -> Dataset:
        """The validation split in the test split's place: what a search measures its candidates
        on with the evaluator (which reads the test split), so the test split never chooses."""
        return replace(self, test=self.val)

    def save(self, path: Path) -> None:
        """The manifest: each source once, then each split's rows, labels and digest."""
        sources = list({id(split.source): split.source for split in self.splits.values()}.values())
        manifest = {
            "sources": [asdict(source) for source in sources],
            "splits": {name: {"source": sources.index(split.source), "rows": split.rows.tolist(),
                              "labels": split.labels.tolist(), "digest": split.digest}
                       for name, split in self.splits.items()},
        }
        if any(source.kind == "memory" for source in sources):
            raise ValueError("arrays handed in by code have no manifest: they cannot be reopened")
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(manifest))

    @classmethod
    def load(cls, path: Path) -> Dataset:
        manifest = json.loads(path.read_text())
        sources = [Source(**{**spec, "files": tuple(spec["files"]), "size": tuple(spec["size"])})
                   for spec in manifest["sources"]]
        return cls(**{name: Split(sources[entry["source"]], np.asarray(entry["rows"], np.int64),
                                  np.asarray(entry["labels"], np.int64), entry["digest"])
                      for name, entry in manifest["splits"].items()})
