"""Tests for tasks.data.load_data: digits, npz and image-folder sources, and refused bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tasks.config import DataConfig, GateConfig
from tasks.data import check_certifiable, load_data
from tasks.errors import InputError
from tasks.sources import Arrays, ImageFiles
from tasks.splits import Dataset, Pool, Split, Unlabeled

SPLITS = ("train", "val", "test")
N, CLASSES, SHAPE = 60, 3, (6, 6, 1)
IMAGE_CLASSES = ("cat", "dog", "emu")  # label = position in sorted folder names
IMAGES_PER_CLASS, IMAGE_HW = 10, (6, 10)  # non-square, so a swapped (height, width) shows


def _x(n: int = N, dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    return rng.random((n, *SHAPE)).astype(dtype)


def _y(n: int = N, classes: int = CLASSES) -> np.ndarray:
    return np.arange(n) % classes


def _poisoned(value: float, dtype: type = np.float32) -> np.ndarray:
    x = _x(dtype=dtype)
    x[7, 2, 3, 0] = value
    return x


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _load(source: str, seed: int = 0, **cfg) -> Dataset:
    return load_data(DataConfig(source=source, **cfg), seed=seed)


def _rows(*arrays: np.ndarray) -> list[bytes]:
    """Every sample as bytes, sorted: equal lists mean the same multiset of samples."""
    return sorted(row.tobytes() for array in arrays for row in array.astype(np.float32))


def _split(data: Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    split = data.splits[name]
    return split.read(), split.labels


# --- digits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_data(DataConfig(), seed=0)


def test_digits_are_float32_images_in_unit_range_with_int64_labels(digits):
    for name in SPLITS:
        x, y = _split(digits, name)
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
        assert x.min() == 0.0 and x.max() == 1.0  # 0..16 pixel counts scaled by 1/16
        assert y.dtype == np.int64 and y.shape == (len(x),)
    assert digits.input_shape == (8, 8, 1)
    assert digits.num_classes == 10
    assert set(np.unique(digits.train.labels)) == set(range(10))


def test_digits_splits_partition_the_data_by_the_configured_fractions(digits):
    raw = load_digits()
    total = len(raw.target)
    sizes = {name: len(_split(digits, name)[1]) for name in SPLITS}
    assert sum(sizes.values()) == total
    assert abs(sizes["test"] - 0.2 * total) <= 1
    assert sizes["val"] == 400  # val_fraction auto: 10 % of 1,437 raised to 400 samples
    # every original (image, label) pair lands in exactly one split
    original = np.concatenate([(raw.images / 16.0).reshape(total, -1), raw.target[:, None]], axis=1)
    split = [np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
             for x, y in (_split(digits, name) for name in SPLITS)]
    assert _rows(*split) == _rows(original)


@pytest.mark.parametrize(("rest", "val_fraction", "share"), [
    (50_000, "auto", 0.1), (2_000, "auto", 0.2), (1_000, "auto", 0.3), (1_000, 0.05, 0.05)])
def test_auto_validation_is_ten_percent_raised_to_400_samples_up_to_30_percent(rest, val_fraction,
                                                                             share):
    assert DataConfig(val_fraction=val_fraction).val_share(rest) == pytest.approx(share)


def test_digits_split_is_reproducible_per_seed(digits):
    again, other = load_data(DataConfig(), seed=0), load_data(DataConfig(), seed=1)
    for name in SPLITS:
        assert np.array_equal(_split(again, name)[0], _split(digits, name)[0])
        assert np.array_equal(_split(again, name)[1], _split(digits, name)[1])
    assert not np.array_equal(other.test.read(), digits.test.read())


# --- npz -------------------------------------------------------------------------------------


def test_npz_without_val_carves_val_from_train_and_keeps_test(tmp_path):
    x_train, y_train, x_test, y_test = _x(50), _y(50), _x(10, seed=1), _y(10)
    source = _npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = _load(source)
    assert (len(data.train), len(data.val)) == (35, 15)  # auto: 30 % of 50
    assert _rows(data.train.read(), data.val.read()) == _rows(x_train)
    np.testing.assert_array_equal(data.test.read(), x_test)
    np.testing.assert_array_equal(data.test.labels, y_test)
    assert np.array_equal(_load(source).val.read(), data.val.read())
    assert not np.array_equal(_load(source, seed=1).val.read(), data.val.read())


def test_npz_with_explicit_val_keeps_every_split_as_given(tmp_path):
    given = {
        "x_train": _x(40, np.float64), "y_train": _y(40),
        "x_val": _x(9, np.float64, seed=1), "y_val": _y(9),
        "x_test": _x(12, np.float64, seed=2), "y_test": _y(12),
    }
    data = _load(_npz(tmp_path, **given))
    for name in SPLITS:
        x, y = _split(data, name)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, given[f"x_{name}"].astype(np.float32))
        np.testing.assert_array_equal(y, given[f"y_{name}"])


def test_npz_xy_is_split_stratified(tmp_path):
    x, y = _x(), _y()
    data = _load(_npz(tmp_path, x=x, y=y))
    assert set(np.unique(data.train.labels)) == set(range(CLASSES))
    assert np.bincount(data.test.labels).tolist() == [4, 4, 4]  # 20% of 20 per class
    assert _rows(data.train.read(), data.val.read(), data.test.read()) == _rows(x)


@pytest.mark.parametrize("scale_uint8, divisor", [(True, 255.0), (False, 1.0)])
def test_npz_uint8_pixels_are_scaled_only_when_asked(tmp_path, scale_uint8, divisor):
    x_test = _x(12, np.uint8, seed=1)
    x_test[0, 0, 0, 0], x_test[1, 0, 0, 0] = 0, 255
    source = _npz(tmp_path, x_train=_x(40, np.uint8), y_train=_y(40), x_test=x_test, y_test=_y(12))
    data = _load(source, scale_uint8=scale_uint8)
    assert data.test.read().dtype == np.float32
    np.testing.assert_allclose(data.test.read(), x_test / divisor, rtol=1e-6)
    assert data.train.read().max() <= 255.0 / divisor


# --- images:DIR ------------------------------------------------------------------------------


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """One folder per class; every pixel of class k's images is grey 60*k + i."""
    for k, name in enumerate(IMAGE_CLASSES):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            pixels = np.full((*IMAGE_HW, 3), 60 * k + i, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / "notes.txt").write_text("not an image")
    return tmp_path / "images"


@pytest.mark.parametrize(
    "color_mode, image_size, sample_shape",
    [
        ("rgb", None, (*IMAGE_HW, 3)),
        ("grayscale", None, (*IMAGE_HW, 1)),
        ("rgb", (4, 5), (4, 5, 3)),
        ("grayscale", (12, 3), (12, 3, 1)),
    ],
)
def test_image_folder_shapes_follow_color_mode_and_image_size(
    image_dir, color_mode, image_size, sample_shape
):
    data = _load(f"images:{image_dir}", color_mode=color_mode, image_size=image_size)
    assert data.input_shape == sample_shape
    total = sum(len(_split(data, name)[0]) for name in SPLITS)
    assert total == len(IMAGE_CLASSES) * IMAGES_PER_CLASS
    assert all(_split(data, name)[0].shape[1:] == sample_shape for name in SPLITS)


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_image_folder_labels_are_sorted_folder_positions(image_dir, color_mode):
    data = _load(f"images:{image_dir}", color_mode=color_mode)
    assert data.num_classes == len(IMAGE_CLASSES)
    for name in SPLITS:
        x, y = _split(data, name)
        assert 0.0 <= x.min() and x.max() <= 1.0
        grey = np.round(x[:, 0, 0, 0] * 255)
        np.testing.assert_array_equal(grey // 60, y)
        assert np.all(x == x[:, :1, :1, :1])  # uniform grey survives conversion and resizing


# --- bad input -------------------------------------------------------------------------------


def _corrupt_npz(tmp_path: Path) -> str:
    path = tmp_path / "data.npz"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    return f"npz:{path}"


def _class_folders(tmp_path: Path, folders: dict[str, dict[str, bytes | None]]) -> str:
    """images:DIR from {class: {file name: bytes, or None for a real 4x4 PNG}}."""
    root = tmp_path / "images"
    for folder, files in folders.items():
        (root / folder).mkdir(parents=True)
        for name, content in files.items():
            if content is None:
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / folder / name)
            else:
                (root / folder / name).write_bytes(content)
    return f"images:{root}"


def _folder_without_classes(tmp_path: Path) -> str:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "loose.png")
    return f"images:{tmp_path}"


def _explicit_splits(x_train=None, y_train=None, x_test=None, y_test=None) -> dict[str, np.ndarray]:
    return {
        "x_train": _x(40) if x_train is None else x_train,
        "y_train": _y(40) if y_train is None else y_train,
        "x_val": _x(6), "y_val": _y(6),
        "x_test": _x(6) if x_test is None else x_test,
        "y_test": _y(6) if y_test is None else y_test,
    }


BAD_INPUTS = [
    pytest.param(
        lambda p: f"npz:{p / 'missing.npz'}", r"missing\.npz does not exist", id="missing-npz"
    ),
    pytest.param(lambda p: f"images:{p / 'missing'}", r"missing does not exist", id="missing-dir"),
    pytest.param(_corrupt_npz, r"cannot read .*data\.npz as \.npz", id="corrupt-npz"),
    pytest.param(
        lambda p: _npz(p, x=np.array([{}] * N, dtype=object), y=_y()),
        r"cannot read .*data\.npz as \.npz \(x holds Python objects",
        id="object-array",
    ),
    pytest.param(
        lambda p: _npz(p, a=_x(), b=_y()),
        r"holds arrays \['a', 'b'\]; expected x_train, y_train, x_test, y_test",
        id="wrong-array-names",
    ),
    pytest.param(lambda p: _npz(p, x=_poisoned(np.nan), y=_y()), "contains NaN, inf", id="nan"),
    pytest.param(lambda p: _npz(p, x=_poisoned(np.inf), y=_y()), "contains NaN, inf", id="inf"),
    pytest.param(lambda p: _npz(p, x=_poisoned(-np.inf), y=_y()), "contains NaN, inf", id="-inf"),
    pytest.param(
        lambda p: _npz(p, x=_x(), y=_y() - 1), r"label -1 in y is out of range", id="negative-label"
    ),
    pytest.param(
        lambda p: _npz(p, **_explicit_splits(y_test=_y(6) - 1)),
        r"label -1 in y_test is out of range",
        id="negative-test-label",
    ),
    pytest.param(
        lambda p: _npz(p, x=_x(), y=_y() + 0.5),
        "y must hold a class id or a row of 0/1 labels per sample, got float64",
        id="fractional-labels",
    ),
    pytest.param(
        lambda p: _npz(p, x=_x(), y=np.zeros(N, dtype=np.int64)),
        r"found 1 class\(es\); a classifier needs at least two",
        id="one-class",
    ),
    pytest.param(
        lambda p: _npz(p, **_explicit_splits(y_train=np.zeros(40, dtype=np.int64))),
        "training split has one class",
        id="one-class-in-train",
    ),
    pytest.param(
        lambda p: _npz(p, **_explicit_splits(x_test=_x(0), y_test=_y(0))),
        "the test split is empty",
        id="empty-test-split",
    ),
    pytest.param(
        lambda p: _npz(p, x=_x(), y=_y(N - 1)),
        f"x has {N} samples but y has {N - 1}",
        id="length-mismatch",
    ),
    pytest.param(
        lambda p: _npz(p, **_explicit_splits(y_train=_y(39))),
        "x_train has 40 samples but y_train has 39",
        id="length-mismatch-train",
    ),
    pytest.param(_folder_without_classes, "has no sub-folders", id="no-class-folders"),
    pytest.param(
        lambda p: f"images:{_npz(p, x=_x(), y=_y()).removeprefix('npz:')}",
        "is not a folder",
        id="images-pointing-at-a-file",
    ),
    pytest.param(
        lambda p: _npz(p, x=_poisoned(1e39, np.float64), y=_y()),  # finite, but not in float32
        "values beyond float32",
        id="beyond-float32",
    ),
    pytest.param(
        lambda p: _class_folders(p, {"a": {"readme.txt": b"text"}, "b": {}}),
        r"class folder .*a has no images \(.*\.png.*\)",
        id="no-images",
    ),
    pytest.param(
        lambda p: _class_folders(p, {"a": {f"{i}.png": None for i in range(5)},
                                     "b": {"0.png": None, "broken.png": b"\x89PNG junk"}}),
        r"cannot read image .*broken\.png",
        id="unreadable-image",
    ),
]


@pytest.mark.parametrize("make_source, message", BAD_INPUTS)
def test_bad_input_is_refused_with_a_message_naming_the_problem(tmp_path, make_source, message):
    with pytest.raises(InputError, match=message):
        _load(make_source(tmp_path))


# --- streaming -------------------------------------------------------------------------------


def _streamed(image_dir: Path, **cfg) -> Dataset:
    return _load(f"images:{image_dir}", cache_mb=0, **cfg)


def test_a_folder_over_the_cache_streams_the_inputs_it_would_cache(image_dir):
    streamed, cached = _streamed(image_dir), _load(f"images:{image_dir}")
    assert streamed.train.source.stored is None and cached.train.source.stored is not None
    for name in SPLITS:
        np.testing.assert_array_equal(streamed.splits[name].read(), cached.splits[name].read())
        assert streamed.splits[name].digest == cached.splits[name].digest


def test_training_batches_keep_each_input_with_its_label_and_targets_when_shuffled(image_dir):
    train = _streamed(image_dir).train
    grey = train.read()[:, 0, 0, 0]
    targets = np.stack([grey, -grey], axis=1)  # one row per sample, as the teacher's logits
    seen = []
    for x, packed in train.batches(4, shuffle=True, targets=targets).as_numpy_iterator():
        np.testing.assert_array_equal(packed[:, 0], np.round(x[:, 0, 0, 0] * 255) // 60)  # label
        np.testing.assert_array_equal(packed[:, 1:], np.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], 1))
        seen += x[:, 0, 0, 0].tolist()
    assert sorted(seen) == sorted(grey.tolist()) and seen != grey.tolist()  # each once, shuffled


def test_the_manifest_holds_no_pixels_and_its_digest_follows_a_file_changed_in_place(
        image_dir, tmp_path):
    data = _streamed(image_dir, image_size=(64, 64))
    data.save(tmp_path / "splits.json")
    decoded = sum(len(split) for split in data.splits.values()) * 64 * 64 * 3
    assert (tmp_path / "splits.json").stat().st_size < decoded / 20
    reopened = Dataset.load(tmp_path / "splits.json")
    np.testing.assert_array_equal(reopened.test.read(), data.test.read())
    test_file = Path(data.test.source.path) / data.test.source.files[data.test.rows[0]]
    Image.fromarray(np.full((*IMAGE_HW, 3), 250, np.uint8)).save(test_file)  # same name, new pixels
    again = _streamed(image_dir, image_size=(64, 64))
    assert again.test.digest != data.test.digest
    assert (again.train.digest, again.val.digest) == (data.train.digest, data.val.digest)


@pytest.mark.parametrize("cache_mb, streams", [(0, True), (1024, False)])
def test_an_epoch_of_a_streamed_folder_holds_a_few_batches_not_the_data_set(
        tmp_path, cache_mb, streams):
    """More samples than an epoch may hold at once when streamed: numpy's allocations (traced)
    peak at a few batches, far below the data set's inputs; a cached folder holds them all."""
    import tracemalloc

    for label in range(2):
        (tmp_path / "big" / str(label)).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2400):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "big" / str(i % 2) / f"{i}.png")
    data = _load(f"images:{tmp_path / 'big'}", cache_mb=cache_mb, test_fraction=0.1,
                 val_fraction=0.1)
    data = Dataset.load(_saved(data, tmp_path))  # as a stage opens it: nothing read yet
    warm_up = Split.of(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2)).batches(2)
    next(iter(warm_up))  # TensorFlow's own start-up allocations, before tracing
    tracemalloc.start()
    try:
        count = sum(1 for _ in data.train.batches(32, shuffle=True).as_numpy_iterator())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == -(-len(data.train) // 32)
    inputs_bytes = len(data.train) * 32 * 32 * 3 * 4  # float32
    assert (peak < inputs_bytes / 4) == streams, f"peak {peak} bytes, {inputs_bytes} of inputs"


def _saved(data: Dataset, folder: Path) -> Path:
    data.save(folder / "splits.json")
    return folder / "splits.json"


def test_an_uncompressed_npz_is_memory_mapped_and_reads_as_a_compressed_one(tmp_path):
    x, y = _x(dtype=np.uint8), _y()
    x = np.asfortranarray(x)  # the .npy header's order is honoured too
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    plain, packed = _load(f"npz:{tmp_path / 'plain.npz'}"), _load(f"npz:{tmp_path / 'packed.npz'}")
    assert isinstance(plain.train.source.stored, np.memmap)
    assert not isinstance(packed.train.source.stored, np.memmap)
    for name in SPLITS:
        np.testing.assert_array_equal(plain.splits[name].read(), packed.splits[name].read())
        assert plain.splits[name].digest == packed.splits[name].digest


def test_a_streamed_folder_decodes_each_image_once_per_process(image_dir, tmp_path, monkeypatch):
    data = Dataset.load(_saved(_streamed(image_dir), tmp_path))  # as a stage opens it
    decoded = []
    decode = ImageFiles._decode
    monkeypatch.setattr(ImageFiles, "_decode",
                        lambda self, row: decoded.append(row) or decode(self, row))
    epochs = [data.train.read(), data.train.read(np.arange(len(data.train))[::-1])]
    np.testing.assert_array_equal(epochs[0], epochs[1][::-1])  # read back from the decoded file
    assert sorted(decoded) == sorted(data.train.rows.tolist())


# --- the unlabeled pool (data.unlabeled) -----------------------------------------------------


def _pool_npz(tmp_path: Path, x: np.ndarray) -> str:
    np.savez(tmp_path / "pool.npz", x=x)
    return f"npz:{tmp_path / 'pool.npz'}"


@pytest.fixture
def labeled(tmp_path: Path) -> tuple[str, Dataset]:
    """An npz data source and its splits (no pool)."""
    source = _npz(tmp_path, x=_x(), y=_y())
    return source, _load(source)


def test_a_pool_drops_training_inputs_and_splits_the_rest_in_two_disjoint_seeded_parts(
        tmp_path, labeled, caplog):
    source, plain = labeled
    trained = plain.train.read(slice(4))
    pool_x = np.concatenate([trained, _x(30, seed=5)])
    pool = _pool_npz(tmp_path, pool_x)
    data = _load(source, unlabeled=pool, unlabeled_choose_fraction=0.4)

    assert "data.unlabeled: 4 of its 34 inputs are training inputs too" in caplog.text
    choose, certify = data.pool.choose, data.pool.certify
    assert (len(choose), len(certify)) == (12, 18)  # 40 % of the 30 left choose
    assert not set(choose.rows) & set(certify.rows)
    assert sorted([*choose.rows, *certify.rows]) == list(range(4, 34))  # all but the trained
    assert _rows(choose.read(), certify.read()) == _rows(pool_x[4:])
    assert {name: s.digest for name, s in data.splits.items()} == {
        name: s.digest for name, s in plain.splits.items()}  # the splits as without a pool
    again, other = _load(source, unlabeled=pool, unlabeled_choose_fraction=0.4), \
        _load(source, seed=1, unlabeled=pool, unlabeled_choose_fraction=0.4)
    np.testing.assert_array_equal(again.pool.certify.rows, certify.rows)
    assert again.pool.certify.digest == certify.digest != choose.digest
    assert not np.array_equal(other.pool.certify.rows, certify.rows)

    data.save(tmp_path / "splits.json")  # reopened from the manifest, as a stage does
    manifest = (tmp_path / "splits.json").read_text()
    assert '"pool": {"choose"' in manifest and "labels" not in manifest.split('"pool"')[1]
    reopened = Dataset.load(tmp_path / "splits.json").pool
    for name, part in data.pool.parts.items():
        np.testing.assert_array_equal(reopened.parts[name].read(), part.read())
        assert reopened.parts[name].digest == part.digest
    outputs = reopened.certify.outputs(lambda x: x.reshape(len(x), -1)[:, :3])
    assert outputs.shape == (18, 3)


def test_a_flat_image_folder_pool_is_decoded_as_the_labeled_images_are(image_dir, tmp_path):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((*IMAGE_HW, 3), 200 + i, np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    data = _load(f"images:{image_dir}", color_mode="grayscale", unlabeled=f"images:{folder}",
                 cache_mb=0)
    pool = data.pool
    assert (len(pool.choose), len(pool.certify)) == (6, 6)
    assert pool.certify.sample_shape == data.input_shape == (*IMAGE_HW, 1)
    assert pool.certify.source.stored is None  # streamed, as the labeled images are
    grey = np.round(np.concatenate([pool.choose.read(), pool.certify.read()])[:, 0, 0, 0] * 255)
    assert sorted(grey.tolist()) == list(range(200, 212))


def _certify(size: int, budget: float, fraction: float = 0.5) -> None:
    """check_certifiable of a pool of `size` inputs, `fraction` of them choosing (in memory)."""
    pool = Unlabeled(Arrays.of(_x(size, seed=9)), np.arange(size))
    choosing = int(size * fraction)
    labeled = Split.of(_x(6), _y(6))
    data = Dataset(labeled, labeled, labeled, pool=Pool(pool.subset(slice(choosing)),
                                                        pool.subset(slice(choosing, None))))
    check_certifiable(data, DataConfig(unlabeled_choose_fraction=fraction),
                      GateConfig(max_accuracy_drop=budget, confidence=0.95))


def test_a_certify_part_too_small_to_certify_the_gates_budget_is_refused_naming_the_size():
    # 368 certify: a model that never disagrees certifies 1 pt at 97.5 %, the confidence of each
    # of the gate's two bounds when it has a pool (95 % in all)
    _certify(736, 0.01)
    with pytest.raises(InputError, match=r"certify part holds 367 inputs \(of the 734 .*takes at "
                                         r"least 368 .*give at least 735 unlabeled inputs"):
        _certify(734, 0.01)
    with pytest.raises(InputError, match=r"holds 30 inputs .* at least 368 .*at least 3,671"):
        _certify(300, 0.01, fraction=0.9)
    with pytest.raises(InputError, match="no number of unlabeled inputs certifies a "
                                         "gate.max_accuracy_drop of 0"):
        _certify(1000, 0.0)


BAD_POOLS = [
    pytest.param(lambda p: f"npz:{p / 'nope.npz'}", r"data.unlabeled: .*nope\.npz does not exist",
                 id="missing"),
    pytest.param(lambda p: _pool_npz(p, _x(10)[:, :5]),
                 r"data.unlabeled: its inputs have shape \(5, 6, 1\), the data's \(and the "
                 r"teacher's\) \(6, 6, 1\)", id="other-shape"),
    pytest.param(lambda p: _pool_npz(p, np.array([["a"] * 6] * 10)),
                 r"data.unlabeled: x must be numeric, got <U1", id="not-numeric"),
    pytest.param(lambda p: _pool_npz(p, _x(0)), r"data.unlabeled: .*pool.npz holds no inputs",
                 id="empty"),
    pytest.param(lambda p: _npz(p, inputs=_x(5)),
                 r"data.unlabeled: .*data.npz holds arrays \['inputs'\]; expected an array x",
                 id="no-x"),
    pytest.param(lambda p: _pool_npz(p, _poisoned(np.nan)[:20]),
                 r"data.unlabeled npz:.*: an input contains NaN", id="nan"),
    pytest.param(lambda p: _class_folders(p, {"a": {"0.png": None}}),
                 r"data.unlabeled: .*images holds no images .*\(only the folders a\); put the "
                 r"unlabeled images in the folder itself", id="class-folders"),
]


@pytest.mark.parametrize("make_pool, message", BAD_POOLS)
def test_a_bad_pool_is_refused_with_a_message_naming_the_problem(tmp_path, labeled, make_pool,
                                                                  message):
    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(InputError, match=message):
        _load(labeled[0], unlabeled=make_pool(pool))


def test_a_pool_of_training_inputs_only_is_refused(tmp_path, labeled):
    source, plain = labeled
    with pytest.raises(InputError, match=r"all 8 of its inputs are training inputs too; the "
                                         r"teacher trained on them"):
        _load(source, unlabeled=_pool_npz(tmp_path, plain.train.read(slice(8))))
