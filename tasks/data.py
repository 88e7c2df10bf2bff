"""Data sets: the built-in digits, npz files, image folders and TFRecord files, split and checked
the same way; and the unlabeled pool (data.unlabeled), read by the same readers without labels.

What is read here is the split (tasks/splits.py): labels, and where each split's inputs are. The
inputs are read, checked finite and hashed a batch at a time, never all at once as float32.
scikit-learn (seconds to import) is imported where data is split: the stages that reopen a
manifest do not need it.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from tasks.config import DataConfig, GateConfig
from tasks.errors import InputError
from tasks.fidelity import inputs_to_certify
from tasks.power import GateRule
from tasks.sources import (
    Arrays,
    ImageFiles,
    Pictures,
    Records,
    Source,
    class_folders,
    index_records,
    read_digits,
    read_npz_array,
)
from tasks.splits import Dataset, Pool, Split, Unlabeled
from tasks.task import check_label_values

log = logging.getLogger(__name__)  # under `tasks`: Prefect shows it (flows/__init__.py)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PIXEL_DIVISOR = 255.0  # uint8 pixels -> [0, 1] (data.scale_uint8)
DIGITS_DIVISOR = 16.0  # digits' pixels are 0-16
VAL_SHARE_OF_TEST = 1 / 3  # a validation split carved from the test split leaves it 2/3 at least
SOURCE, UNLABELED = "data.source", "data.unlabeled"  # the config keys a reader names in errors


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """Read, split and check the configured data set and its unlabeled pool, if any; the inputs
    are hashed, not kept."""
    kind, _, _ = cfg.source.partition(":")
    if kind == "digits":
        _, y = read_digits()
        data = _checked(_split(Arrays(divisor=DIGITS_DIVISOR), y, cfg, seed), cfg.source)
    else:
        read = {"npz": _load_npz, "images": _load_image_folder, "tfrecord": _load_records}[kind]
        data = _checked(read(_existing(cfg.source, SOURCE), cfg, seed), cfg.source)
    return replace(data, pool=load_pool(cfg, data, seed)) if cfg.unlabeled else data


def _existing(source: str, key: str) -> Path:
    """The path of `KIND:PATH` source `source` (config `key`), which must exist."""
    kind, _, location = source.partition(":")
    path = Path(location).expanduser().resolve()
    if not path.exists():
        raise InputError(f"{key}: {path} does not exist; point `{kind}:` at a real path")
    return path


def _load_npz(path: Path, cfg: DataConfig, seed: int) -> Dataset:
    arrays = _npz_arrays(path, SOURCE)

    def source(name: str) -> Arrays:
        return _npz_source(path, arrays, name, cfg, SOURCE)

    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        _check_lengths(arrays["x_train"], arrays["y_train"], "x_train", "y_train")
        _check_lengths(arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        train = Split(source("x_train"), np.arange(len(arrays["y_train"])), arrays["y_train"])
        if {"x_val", "y_val"} <= arrays.keys():
            _check_lengths(arrays["x_val"], arrays["y_val"], "x_val", "y_val")
            val = Split(source("x_val"), np.arange(len(arrays["y_val"])), arrays["y_val"])
        else:
            train, val = _stratified(train, cfg.val_share(len(train)), seed)
        test = Split(source("x_test"), np.arange(len(arrays["y_test"])), arrays["y_test"])
        return Dataset(train, val, test)
    if {"x", "y"} <= arrays.keys():
        _check_lengths(arrays["x"], arrays["y"], "x", "y")
        return _split(source("x"), arrays["y"], cfg, seed)
    raise InputError(
        f"data.source: {path} holds arrays {sorted(arrays)}; expected x_train, y_train, x_test, "
        "y_test (optionally x_val, y_val) or x, y"
    )


def _npz_arrays(path: Path, key: str) -> dict[str, np.ndarray]:
    """Every array of the npz at `path` (config `key`), memory-mapped where it can be."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.removesuffix(".npy") for name in archive.namelist()]
        return {name: read_npz_array(path, name) for name in names}
    except Exception as exc:  # zipfile, pickle and format errors all mean "not a readable npz"
        raise InputError(f"{key}: cannot read {path} as .npz ({exc})") from exc


def _npz_source(path: Path, arrays: dict[str, np.ndarray], name: str, cfg: DataConfig,
                key: str) -> Arrays:
    """Array `name` of the npz at `path` as a source of inputs (uint8 scaled as configured)."""
    _check_numeric(arrays[name], name, key)
    divisor = _divisor(arrays[name].dtype, cfg)
    return Arrays(divisor=divisor, path=str(path), array=name).holding(arrays[name])


def _load_image_folder(path: Path, cfg: DataConfig, seed: int) -> Dataset:
    """The folder's files and labels; the first image gives the size unless data.image_size."""
    if not path.is_dir():
        raise InputError(f"data.source: {path} is not a folder; images: wants one sub-folder per class")
    classes = class_folders(path)
    if not classes:
        raise InputError(f"data.source: {path} has no sub-folders; put each class in its own folder")
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = _image_files(folder)
        if not found:
            raise InputError(
                f"data.source: class folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "remove it or add its images"
            )
        files += [str(f.relative_to(path)) for f in found]
        labels += [label] * len(found)
    return _split(_images(path, files, cfg, SOURCE), np.asarray(labels), cfg, seed)


def _image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def _images(folder: Path, files: list[str], cfg: DataConfig, key: str) -> Pictures:
    """Image `files` (relative to `folder`) as a source decoded as data.image_size/color_mode."""
    return _sized(ImageFiles(**_pictures(cfg), path=str(folder), files=tuple(files)), cfg, key)


def _load_records(path: Path, cfg: DataConfig, seed: int) -> Dataset:
    """tf.train.Example records: a .tfrecord file, or every *.tfrecord* file of a folder."""
    records = _records(path, cfg, SOURCE)
    labels = np.asarray([_record_feature(records, row, "label", cfg.record_label, "int64_list")[0]
                         for row in range(len(records))])
    return _split(_record_inputs(records, cfg, SOURCE), labels, cfg, seed)


def _records(path: Path, cfg: DataConfig, key: str) -> Records:
    """The records of a .tfrecord file, or of every *.tfrecord* file of a folder (config `key`),
    indexed: at least one."""
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if ".tfrecord" in f.name)
    if not files:
        raise InputError(f"{key}: {path} has no *.tfrecord files; point `tfrecord:` at one "
                         "or at their folder")
    records = Records(**_pictures(cfg), files=tuple(map(str, files)),
                      records=tuple(index_records(files, key)), feature=cfg.record_input)
    if not records.records:
        raise InputError(f"{key}: {path} holds no records")
    return records


def _record_inputs(records: Records, cfg: DataConfig, key: str) -> Records:
    """`records` reading data.record_input: encoded images (decoded as images:DIR's), or a float
    or int list of data.record_shape."""
    first = _record_feature(records, 0, "input", cfg.record_input, "bytes_list", "float_list",
                            "int64_list")
    if isinstance(first[0], bytes):
        return _sized(records, cfg, key)
    size = len(first)
    if not cfg.record_shape or np.prod(cfg.record_shape) != size:
        raise InputError(f"data.record_shape: the records' input `{cfg.record_input}` is a list "
                         f"of {size} values; give its sample shape (e.g. [{size}]), not "
                         f"{cfg.record_shape}")
    return replace(records, shape=tuple(cfg.record_shape), divisor=1.0)


def _record_feature(records: Records, row: int, setting: str, key: str, *kinds: str) -> list:
    """The values of feature `key` (data.record_`setting`) of record `row`: the first of `kinds`
    it holds."""
    features = records.example(row).features.feature
    values = [getattr(features[key], kind).value for kind in kinds] if key in features else []
    if not any(values):
        raise InputError(f"data.record_{setting}: record {records.describe(row)} has no "
                         f"{' or '.join(kinds)} feature `{key}` (it has {sorted(features)}); "
                         "name the feature that holds it")
    return list(next(v for v in values if v))


def _pictures(cfg: DataConfig) -> dict:
    """The settings images are decoded with: channels, scaling, how much to cache."""
    return {"grayscale": cfg.color_mode == "grayscale", "cache_bytes": cfg.cache_mb * 2**20,
            "divisor": PIXEL_DIVISOR if cfg.scale_uint8 else 1.0}


def _sized(source: Pictures, cfg: DataConfig, key: str) -> Pictures:
    """`source` (of config `key`) decoded to data.image_size, or to its first image's size."""
    if cfg.image_size:
        return replace(source, size=tuple(cfg.image_size))
    try:
        return replace(source, size=source.stored_size(0))
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def _divisor(dtype: np.dtype, cfg: DataConfig) -> float:
    return PIXEL_DIVISOR if dtype == np.uint8 and cfg.scale_uint8 else 1.0


def validation_from_test(data: Dataset, seed: int) -> Dataset:
    """The validation split carved from the test split instead (seeded, stratified): as many
    samples as it had, at most VAL_SHARE_OF_TEST of the test split; the old validation samples
    join the training split (they were carved from it). Digests measured anew."""
    share = min(len(data.val) / len(data.test), VAL_SHARE_OF_TEST)
    test, val = _stratified(data.test, share, seed)
    train = Split(data.train.source, np.concatenate([data.train.rows, data.val.rows]),
                  np.concatenate([data.train.labels, data.val.labels]))
    return replace(data, train=train.measured(), val=val.measured(), test=test.measured())


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """The validation split in two seeded, stratified parts, each in the validation's place:
    (the rest, `fraction` of it)."""
    kept, held = _stratified(data.val, fraction, seed)
    return replace(data, val=kept), replace(data, val=held)


def _split(source: Source, y: np.ndarray, cfg: DataConfig, seed: int) -> Dataset:
    if len(y) == 0:
        raise InputError("data.source: the data set has no samples")
    check_label_values(y, "y")
    rest, test = _stratified(Split(source, np.arange(len(y)), y), cfg.test_fraction, seed)
    train, val = _stratified(rest, cfg.val_share(len(rest)), seed)
    return Dataset(train, val, test)


def _stratified(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(the rest, `fraction` of `split`), seeded and stratified by class where every class has
    two samples (the same partition scikit-learn makes of the arrays themselves); label rows
    (multi-label) are split at random."""
    stratify = None
    if split.labels.ndim == 1:
        _, counts = np.unique(split.labels, return_counts=True)
        if len(counts) < 2:
            raise InputError(
                f"data.source: found {len(counts)} class(es); a classifier needs at least two"
            )
        stratify = split.labels if counts.min() >= 2 else None
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(split)), test_size=fraction,
                                      random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise InputError(f"data.source: too few samples ({len(split)}) to split: {exc}") from exc
    return split.subset(kept), split.subset(held)


def _check_lengths(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise InputError(f"data.source: {x_name} has {len(x)} samples but {y_name} has {len(y)}")


def _check_numeric(x: np.ndarray, name: str, key: str) -> None:
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{key}: {name} must be numeric, got {x.dtype}")


def _checked(data: Dataset, source: str) -> Dataset:
    """Refuse data no stage can learn from: empty splits, bad labels, NaN/inf, one class; and
    hash every split (its inputs as float32, where values beyond its range become inf)."""
    measured = {}
    for name, split in data.splits.items():
        if len(split) == 0:
            raise InputError(f"data.source {source}: the {name} split is empty; supply more samples")
        check_label_values(split.labels, f"y_{name}")
        if split.sample_shape != data.input_shape:
            raise InputError(
                f"data.source {source}: x_{name} samples have shape {split.sample_shape}, "
                f"x_train samples {data.input_shape}; all splits must match"
            )
        split = Split(split.source, split.rows, split.labels.astype(np.int64))
        try:
            measured[name] = split.measured()
        except ValueError as exc:
            raise InputError(f"data.source {source}: x_{name} {exc}") from None
    if data.train.labels.ndim == 1 and len(np.unique(data.train.labels)) < 2:
        raise InputError(f"data.source {source}: the training split has one class; need at least two")
    return Dataset(**measured)


# --- the unlabeled pool ----------------------------------------------------------------------


def load_pool(cfg: DataConfig, data: Dataset, seed: int) -> Pool:
    """data.unlabeled's inputs, read as data.source's are (without labels), in two seeded parts
    that share no input: data.unlabeled_choose_fraction of them choose, the rest certify. Inputs
    identical to a training input (as float32) are dropped with a warning: the teacher trained
    on them, so its answers there are no evidence."""
    kind, _, _ = cfg.unlabeled.partition(":")
    path = _existing(cfg.unlabeled, UNLABELED)
    read = {"npz": _pool_npz, "images": _pool_images, "tfrecord": _pool_records}[kind]
    source = read(path, cfg)
    pool = Unlabeled(source, np.arange(len(source)))
    if not len(pool):
        raise InputError(f"{UNLABELED}: {path} holds no inputs; give it some, or set "
                         f"{UNLABELED}: null")
    if pool.sample_shape != data.input_shape:
        raise InputError(
            f"{UNLABELED}: its inputs have shape {pool.sample_shape}, the data's (and the "
            f"teacher's) {data.input_shape}; give inputs of the data's shape (images: "
            "data.image_size and data.color_mode decode both sources alike)")
    try:
        trained = set(data.train.sample_digests())
        fresh = np.array([digest not in trained for digest in pool.sample_digests()])
    except ValueError as exc:  # an unreadable image, from either source
        raise InputError(f"{UNLABELED} {cfg.unlabeled}: {exc}") from None
    dropped = int(len(pool) - fresh.sum())
    if dropped == len(pool):
        raise InputError(f"{UNLABELED}: all {len(pool)} of its inputs are training inputs too; "
                         "the teacher trained on them, so its answers there are no evidence: "
                         "give inputs from outside the training split")
    if dropped:
        log.warning("%s: %d of its %d inputs are training inputs too (equal as float32); dropped, "
                    "as the teacher trained on them: %d left", UNLABELED, dropped, len(pool),
                    len(pool) - dropped)
    kept = pool.subset(np.flatnonzero(fresh))
    order = np.random.default_rng(seed).permutation(len(kept))
    choosing = int(len(kept) * cfg.unlabeled_choose_fraction)
    parts = (kept.subset(np.sort(at)) for at in (order[:choosing], order[choosing:]))
    try:
        return Pool(*(part.measured() for part in parts))
    except ValueError as exc:
        raise InputError(f"{UNLABELED} {cfg.unlabeled}: an input {exc}") from None


def _pool_npz(path: Path, cfg: DataConfig) -> Arrays:
    arrays = _npz_arrays(path, UNLABELED)
    if "x" not in arrays:
        raise InputError(f"{UNLABELED}: {path} holds arrays {sorted(arrays)}; expected an array "
                         "x of inputs (no labels needed)")
    return _npz_source(path, arrays, "x", cfg, UNLABELED)


def _pool_images(path: Path, cfg: DataConfig) -> Pictures:
    if not path.is_dir():
        raise InputError(f"{UNLABELED}: {path} is not a folder; images: wants a folder of images")
    files = _image_files(path)
    if not files:
        folders = sorted(p.name for p in path.iterdir() if p.is_dir())
        inside = f" (only the folders {', '.join(folders)})" if folders else ""
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InputError(f"{UNLABELED}: {path} holds no images ({suffixes}){inside}; put the "
                         f"unlabeled images in the folder itself, or set {UNLABELED}: null")
    return _images(path, [f.name for f in files], cfg, UNLABELED)


def _pool_records(path: Path, cfg: DataConfig) -> Records:
    return _record_inputs(_records(path, cfg, UNLABELED), cfg, UNLABELED)


def check_certifiable(data: Dataset, cfg: DataConfig, gate: GateConfig) -> None:
    """Refuse a pool whose certify part is too small to certify gate.max_accuracy_drop at
    gate.confidence even for a model that never disagrees with the teacher."""
    if data.pool is None:
        return
    certify, fresh = len(data.pool.certify), sum(map(len, data.pool.parts.values()))
    # with a pool the gate takes each bound at half the error (tasks/power.py bound_confidence)
    bound = GateRule("certified", gate.max_accuracy_drop, gate.confidence, 0, certify)
    need = inputs_to_certify(gate.max_accuracy_drop, bound.bound_confidence)
    if need is None:
        raise InputError(f"{UNLABELED}: no number of unlabeled inputs certifies a "
                         "gate.max_accuracy_drop of 0; raise it, or set data.unlabeled: null")
    if certify < need:
        raise InputError(
            f"{UNLABELED}: its certify part holds {certify} inputs (of the {fresh} not in the "
            f"training split; data.unlabeled_choose_fraction {cfg.unlabeled_choose_fraction:g} "
            f"of them choose), but certifying gate.max_accuracy_drop "
            f"{gate.max_accuracy_drop:g} at gate.confidence {gate.confidence:g} ("
            f"{bound.bound_confidence:g} for each of its two bounds) takes at least "
            f"{need:,} (and then only with no disagreement): give at least "
            f"{pool_size(need, cfg.unlabeled_choose_fraction):,} unlabeled inputs the teacher did "
            "not train on, lower data.unlabeled_choose_fraction or raise gate.max_accuracy_drop")


def pool_size(certify: int, choose_fraction: float) -> int:
    """The fewest pool inputs (training duplicates dropped) whose certify part holds `certify`."""
    size = max(certify, int((certify - 1) / (1 - choose_fraction)) - 1)  # at most the fewest
    while size - int(size * choose_fraction) < certify:
        size += 1
    return size
