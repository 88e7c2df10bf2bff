"""Data sets: the built-in digits, npz files and image folders, split and checked the same way.

scikit-learn (seconds to import) is imported where data is read and split: loading saved splits
(`Dataset.load`) needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from tasks.artifacts import atomic_path
from tasks.config import DataConfig
from tasks.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits. The test split is never trained, calibrated or selected on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def for_selection(self) -> Dataset:
        """The validation split in the test split's place: what a search measures its candidates
        on with the evaluator (which reads the test split), so the test split never chooses."""
        return replace(self, x_test=self.x_val, y_test=self.y_val)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{field.name: getattr(self, field.name) for field in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Dataset:
        with np.load(path) as arrays:
            return cls(**{field.name: arrays[field.name] for field in fields(cls)})


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """Read, scale, split and check the configured data set."""
    kind, _, location = cfg.source.partition(":")
    if kind == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0)[..., None]
        return _checked(_split_xy(x, digits.target, cfg, seed), cfg.source)
    path = Path(location).expanduser()
    if not path.exists():
        raise InputError(f"data.source: {path} does not exist; point `{kind}:` at a real path")
    if kind == "npz":
        return _checked(_load_npz(path, cfg, seed), cfg.source)
    return _checked(_load_image_folder(path, cfg, seed), cfg.source)


def _load_npz(path: Path, cfg: DataConfig, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, pickle and format errors all mean "not a readable npz"
        raise InputError(f"data.source: cannot read {path} as .npz ({exc})") from exc
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        _check_lengths(arrays["x_train"], arrays["y_train"], "x_train", "y_train")
        x_train, y_train = _scaled(arrays["x_train"], cfg), arrays["y_train"]
        if {"x_val", "y_val"} <= arrays.keys():
            x_val, y_val = _scaled(arrays["x_val"], cfg), arrays["y_val"]
        else:
            x_train, x_val, y_train, y_val = _stratified(x_train, y_train, cfg.val_fraction, seed)
        return Dataset(x_train, y_train, x_val, y_val, _scaled(arrays["x_test"], cfg), arrays["y_test"])
    if {"x", "y"} <= arrays.keys():
        return _split_xy(_scaled(arrays["x"], cfg), arrays["y"], cfg, seed)
    raise InputError(
        f"data.source: {path} holds arrays {sorted(arrays)}; expected x_train, y_train, x_test, "
        "y_test (optionally x_val, y_val) or x, y"
    )


def _load_image_folder(path: Path, cfg: DataConfig, seed: int) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise InputError(f"data.source: {path} is not a folder; images: wants one sub-folder per class")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"data.source: {path} has no sub-folders; put each class in its own folder")
    mode = "L" if cfg.color_mode == "grayscale" else "RGB"
    size = tuple(reversed(cfg.image_size)) if cfg.image_size else None  # PIL wants (width, height)
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(
                f"data.source: class folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "remove it or add its images"
            )
        for file in files:
            try:
                with Image.open(file) as image:
                    image = image.convert(mode)
                    size = size or image.size
                    images.append(np.asarray(image.resize(size), dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"data.source: cannot read image {file} ({exc})") from exc
            labels.append(label)
    x = np.stack(images)
    x = x[..., None] if x.ndim == 3 else x
    return _split_xy(_scaled(x, cfg), np.asarray(labels), cfg, seed)


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """The validation split in two seeded, stratified parts, each in the validation's place:
    (the rest, `fraction` of it)."""
    x_kept, x_held, y_kept, y_held = _stratified(data.x_val, data.y_val, fraction, seed)
    return replace(data, x_val=x_kept, y_val=y_kept), replace(data, x_val=x_held, y_val=y_held)


def _scaled(x: np.ndarray, cfg: DataConfig) -> np.ndarray:
    if x.dtype == np.uint8 and cfg.scale_uint8:
        return x.astype(np.float32) / 255.0
    return x


def _split_xy(x: np.ndarray, y: np.ndarray, cfg: DataConfig, seed: int) -> Dataset:
    _check_lengths(x, y, "x", "y")
    if len(y) == 0:
        raise InputError("data.source: the data set has no samples")
    _check_labels(y, "y")
    x_rest, x_test, y_rest, y_test = _stratified(x, y, cfg.test_fraction, seed)
    x_train, x_val, y_train, y_val = _stratified(x_rest, y_rest, cfg.val_fraction, seed)
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test)


def _stratified(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> list[np.ndarray]:
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise InputError(
            f"data.source: found {len(counts)} class(es); a classifier needs at least two"
        )
    stratify = y if counts.min() >= 2 else None  # stratifying needs two samples of every class
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise InputError(f"data.source: too few samples ({len(y)}) to split: {exc}") from exc


def _check_lengths(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise InputError(f"data.source: {x_name} has {len(x)} samples but {y_name} has {len(y)}")


def _check_labels(y: np.ndarray, name: str) -> None:
    if y.ndim != 1:
        raise InputError(f"data.source: {name} must be a 1-D array of class ids, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise InputError(f"data.source: {name} must hold integer class ids, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise InputError(
            f"data.source: label {y.min()} in {name} is out of range; class ids start at 0"
        )


def _checked(data: Dataset, source: str) -> Dataset:
    """Refuse data no stage can learn from: empty splits, bad labels, NaN/inf, one class.

    Finiteness is checked after the cast to float32, where values beyond its range become inf.
    """
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(x) == 0:
            raise InputError(f"data.source {source}: the {split} split is empty; supply more samples")
        _check_lengths(x, y, f"x_{split}", f"y_{split}")
        if not np.issubdtype(x.dtype, np.number):
            raise InputError(f"data.source {source}: x_{split} must be numeric, got {x.dtype}")
        _check_labels(y, f"y_{split}")
        if x.shape[1:] != data.x_train.shape[1:]:
            raise InputError(
                f"data.source {source}: x_{split} samples have shape {x.shape[1:]}, "
                f"x_train samples {data.x_train.shape[1:]}; all splits must match"
            )
    cast = Dataset(**{
        f.name: getattr(data, f.name).astype(np.float32 if f.name[0] == "x" else np.int64)
        for f in fields(data)
    })
    for split in ("train", "val", "test"):
        if not np.all(np.isfinite(getattr(cast, f"x_{split}"))):
            raise InputError(
                f"data.source {source}: x_{split} contains NaN, inf or values beyond float32; "
                "clean or rescale them"
            )
    if len(np.unique(cast.y_train)) < 2:
        raise InputError(f"data.source {source}: the training split has one class; need at least two")
    return cast
