"""Where samples come from, read by row: arrays held in memory (the built-in digits, an npz's
arrays), image files and TFRecord files decoded a batch at a time. Every source stores samples in
their own dtype (uint8 pixels stay uint8: a quarter of float32) and gives float32 inputs, stored /
`divisor`, only for the rows asked for.

A source is written into the splits' manifest (tasks/splits.py) by its fields and reopened from
them in every stage; files are read again, never copied.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from tasks.errors import InputError

_decoders = ThreadPoolExecutor(os.cpu_count() or 1)  # Pillow and zlib release the GIL
RECORD_HEADER = struct.Struct("<QI")  # TFRecord: length, masked CRC of the length; then the
RECORD_FOOTER = 4                     # data and its masked CRC
ZIP_LOCAL_HEADER_BYTES = 30  # before a zip member's name; its last 4: name and extra lengths


@dataclass(frozen=True, eq=False)
class Source:
    """The base: float32 inputs are stored / `divisor`. Subclasses read stored samples by row;
    `stored` holds all of them in memory where the source keeps them there."""

    KINDS: ClassVar[dict[str, type[Source]]] = {}
    divisor: float = 1.0

    def __init_subclass__(cls) -> None:
        Source.KINDS[cls.__name__] = cls

    @cached_property
    def stored(self) -> np.ndarray | None:
        """Every sample as stored, in memory; None when read from files a batch at a time."""
        return None

    def __len__(self) -> int:
        """How many samples the source holds."""
        return len(self.stored)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape[1:])

    @property
    def memory_bytes(self) -> int:
        """What this source holds in memory in a process that reads it (a memory-mapped array:
        nothing, the OS's page cache holds what was read)."""
        stored = self.stored
        return 0 if stored is None or isinstance(stored, np.memmap) else stored.nbytes

    def holding(self, array: np.ndarray) -> Source:
        """This source with its samples already read: what `stored` would read."""
        self.__dict__["stored"] = array  # cached_property's own slot
        return self

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The samples at `rows` as float32 inputs."""
        stored = self.stored
        x = stored[rows] if stored is not None else self._read_files(rows)
        return x.astype(np.float32) / self.divisor  # float32 division: the bits of every stage

    def _read_files(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def manifest(self) -> dict:
        return {"kind": type(self).__name__, **asdict(self)}

    @staticmethod
    def from_manifest(spec: dict) -> Source:
        kind = Source.KINDS[spec["kind"]]
        tuples = {f.name for f in fields(kind) if str(f.type).startswith("tuple")}
        return kind(**{key: _tuples(value) if key in tuples else value
                       for key, value in spec.items() if key != "kind"})


def _tuples(value: list) -> tuple:
    return tuple(_tuples(item) if isinstance(item, list) else item for item in value)


@dataclass(frozen=True, eq=False)
class Arrays(Source):
    """An npz file's array `array` at `path`, the built-in digits (no path), or arrays handed in
    by code (`Arrays.of`: no manifest). An npz array stored uncompressed (`np.savez`) is
    memory-mapped: the OS pages in the rows read, so its size does not bound the run's memory;
    a compressed one (`np.savez_compressed`) is read whole."""

    path: str = ""
    array: str = ""

    @classmethod
    def of(cls, array: np.ndarray) -> Arrays:
        return cls(array="memory").holding(array)

    @cached_property
    def stored(self) -> np.ndarray | None:
        if not self.path:
            return read_digits()[0]
        return read_npz_array(Path(self.path), self.array)

    def manifest(self) -> dict:
        if self.array == "memory":
            raise ValueError("arrays handed in by code have no manifest: they cannot be reopened")
        return super().manifest()


def read_npz_array(path: Path, name: str) -> np.ndarray:
    """Array `name` of the npz at `path`: memory-mapped where stored uncompressed (a zip member
    is a .npy file at an offset: its local header, then the .npy header, then the data)."""
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo(f"{name}.npy")
    if member.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays[name]
    with open(path, "rb") as f:
        f.seek(member.header_offset + ZIP_LOCAL_HEADER_BYTES - 4)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(member.header_offset + ZIP_LOCAL_HEADER_BYTES + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(f)
        if dtype.hasobject:
            raise ValueError(f"{name} holds Python objects, which are never unpickled")
        offset = f.tell()
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran_order else "C")


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (8x8 pixels 0-16, uint8) and labels, read from the file it ships
    without importing scikit-learn (seconds), as `load_digits` would."""
    package = Path(importlib.util.find_spec("sklearn").origin).parent
    with gzip.open(package / "datasets" / "data" / "digits.csv.gz") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 8, 8, 1).astype(np.uint8), table[:, -1]


@dataclass(frozen=True, eq=False)
class Pictures(Source):
    """Encoded images, decoded to `size` (height, width), grayscale or RGB, by Pillow (every
    format it reads); held in memory once decoded when they fit in `cache_bytes`, otherwise
    decoded once per process into a temporary file (`Decoded`) as rows are first read."""

    size: tuple[int, int] = (0, 0)
    grayscale: bool = False
    cache_bytes: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    @cached_property
    def stored(self) -> np.ndarray | None:
        fits = len(self) * np.prod(self.sample_shape) * self.dtype.itemsize <= self.cache_bytes
        return self._decode_rows(np.arange(len(self))) if fits else None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)  # pixels

    @cached_property
    def _decoded(self) -> Decoded:
        return Decoded(len(self), self.sample_shape, self.dtype)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (*self.size, 1 if self.grayscale else 3)

    def _read_files(self, rows: np.ndarray) -> np.ndarray:
        return self._decoded.read(rows, self._decode_rows)

    def _decode_rows(self, rows: np.ndarray) -> np.ndarray:
        images = np.stack(list(_decoders.map(self._decode, rows)))
        return images[..., None] if self.grayscale else images

    def _decode(self, row: int) -> np.ndarray:
        mode, size = "L" if self.grayscale else "RGB", self.size[::-1]  # PIL: (width, height)
        with self._image(row) as image:
            image = image if image.mode == mode else image.convert(mode)  # no copy: 10-20 % faster
            return np.asarray(image if image.size == size else image.resize(size), dtype=np.uint8)

    def stored_size(self, row: int) -> tuple[int, int]:
        """(height, width) of the image at `row` as stored."""
        with self._image(row) as image:
            return image.height, image.width

    @contextmanager
    def _image(self, row: int) -> Iterator:
        """The Pillow image at `row`; any failure to read it names the file."""
        from PIL import Image, UnidentifiedImageError

        try:
            with self._open(row) as file, Image.open(file) as image:
                yield image
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {self.describe(row)} ({exc}); replace or "
                             "remove it") from exc

    def _open(self, row: int) -> BinaryIO:
        raise NotImplementedError

    def describe(self, row: int) -> str:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ImageFiles(Pictures):
    """One image file per sample: `files` under the folder `path`."""

    path: str = ""
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, row: int) -> BinaryIO:
        return open(Path(self.path) / self.files[row], "rb")

    def describe(self, row: int) -> str:
        return str(Path(self.path) / self.files[row])


@dataclass(frozen=True, eq=False)
class Records(Pictures):
    """tf.train.Example records in TFRecord `files`, read by their byte offsets (`records`: file,
    offset, length per sample): the input is feature `feature`, encoded image bytes (decoded as
    `Pictures`) or a float or int list of `shape`."""

    files: tuple[str, ...] = ()
    records: tuple[tuple[int, int, int], ...] = ()
    feature: str = "image"
    shape: tuple[int, ...] = ()  # a list feature's sample shape; () for images

    def __len__(self) -> int:
        return len(self.records)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.shape else np.uint8)  # a list's values: as read()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape or super().sample_shape

    def _decode_rows(self, rows: np.ndarray) -> np.ndarray:
        if not self.shape:
            return super()._decode_rows(rows)
        return np.stack([self._values(row).reshape(self.shape) for row in rows])

    def example(self, row: int):
        """The tf.train.Example at `row`."""
        from tensorflow.core.example.example_pb2 import Example

        file, offset, length = self.records[row]
        with open(self.files[file], "rb") as f:
            f.seek(offset)
            return Example.FromString(f.read(length))

    def _values(self, row: int) -> np.ndarray:
        value = self.example(row).features.feature[self.feature]
        return np.asarray(value.float_list.value or value.int64_list.value, dtype=np.float32)

    def _open(self, row: int) -> BinaryIO:
        return io.BytesIO(self.example(row).features.feature[self.feature].bytes_list.value[0])

    def describe(self, row: int) -> str:
        file, offset, _ = self.records[row]
        return f"{self.files[file]} (record at byte {offset})"


class Decoded:
    """Samples decoded once per process into a temporary file, filled as rows are first read:
    later epochs read them back (from the OS's page cache, not the process's memory) instead of
    decoding again, as tf.data's `cache(filename)`. Needs the decoded size free in TMPDIR."""

    def __init__(self, count: int, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape)) * dtype.itemsize
        # open as long as the source lives; the OS deletes it when closed, or at exit
        self.file = tempfile.TemporaryFile(prefix="shrinkflow-decoded-")  # noqa: SIM115
        os.ftruncate(self.file.fileno(), count * self.row_bytes)  # sparse until written
        self.filled = np.zeros(count, dtype=bool)

    def read(self, rows: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The samples at `rows`, decoding (`decode`) and writing those never read before."""
        rows = np.asarray(rows)
        fd = self.file.fileno()
        missing = rows[~self.filled[rows]]
        if len(missing):
            for row, sample in zip(missing, decode(missing), strict=True):
                os.pwrite(fd, np.ascontiguousarray(sample, self.dtype).tobytes(),
                          int(row) * self.row_bytes)
            self.filled[missing] = True  # after the writes: a filled row is always on disk
        data = b"".join(os.pread(fd, self.row_bytes, int(row) * self.row_bytes) for row in rows)
        return np.frombuffer(data, self.dtype).reshape(len(rows), *self.shape)


def index_records(files: list[Path], key: str) -> list[tuple[int, int, int]]:
    """(file, offset, length) of every record in TFRecord `files` (of config `key`), from their
    length headers."""
    index = []
    for number, path in enumerate(files):
        size, offset = path.stat().st_size, 0
        with open(path, "rb") as f:
            while offset < size:
                header = f.read(RECORD_HEADER.size)
                if len(header) < RECORD_HEADER.size:
                    raise InputError(f"{key}: {path} ends inside a record header at byte "
                                     f"{offset}; is it a TFRecord file, and complete?")
                length, _ = RECORD_HEADER.unpack(header)
                start = offset + RECORD_HEADER.size
                offset = start + length + RECORD_FOOTER
                if offset > size:
                    raise InputError(f"{key}: {path} ends inside the record at byte "
                                     f"{start}; is it a TFRecord file, and complete?")
                index.append((number, start, length))
                f.seek(offset)
    return index


def class_folders(path: Path) -> list[Path]:
    """An image folder's classes, in the order of their ids: its sub-folders, sorted by name."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
