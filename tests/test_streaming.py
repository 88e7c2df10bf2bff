"""Data read a batch at a time through the whole flow: an image folder streamed from its files
(over data.cache_mb) and TFRecord files; the load stage writes the splits' manifest, never a copy
of the data. Also the TFRecord source's own checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from flows.compress import compress
from flows.stages import STAGES
from tasks.config import DataConfig
from tasks.data import load_data
from tasks.errors import InputError
from tasks.splits import Dataset

SAMPLES = 150  # enough for every class in each split


def _pixels(digits: Dataset, i: int) -> np.ndarray:
    return np.round(digits.train.read(slice(i, i + 1))[0] * 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(encoded, "PNG")
    return encoded.getvalue()


def _example(**features: tf.train.Feature) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _image_folder(digits: Dataset, root: Path) -> str:
    for i in range(SAMPLES):
        folder = root / "pictures" / str(digits.train.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(_png(_pixels(digits, i)))
    return f"images:{root / 'pictures'}"


def _records(digits: Dataset, root: Path) -> str:
    """Two TFRecord files of PNG-encoded digits and their labels."""
    (root / "records").mkdir()
    for part in range(2):
        with tf.io.TFRecordWriter(str(root / "records" / f"digits-{part}.tfrecord")) as writer:
            for i in range(part, SAMPLES, 2):
                png = tf.train.BytesList(value=[_png(_pixels(digits, i))])
                label = tf.train.Int64List(value=[digits.train.labels[i]])
                writer.write(_example(image=tf.train.Feature(bytes_list=png),
                                      label=tf.train.Feature(int64_list=label)))
    return f"tfrecord:{root / 'records'}"


@pytest.mark.parametrize("make_source", [_image_folder, _records], ids=["folder", "tfrecord"])
def test_streamed_data_goes_through_the_whole_flow_and_only_its_manifest_is_written(
        prefect_server, dvc_project, tiny_params, digits, make_source):
    params = tiny_params(f"data.source={make_source(digits, dvc_project)}", "data.cache_mb=0",
                         "data.color_mode=grayscale")
    report = compress(params, workdir=str(dvc_project))

    assert report["stages"] == dict.fromkeys(STAGES, "ran")
    data = Dataset.load(dvc_project / "artifacts" / "splits.json")
    assert data.train.source.stored is None  # streamed: nothing held
    assert sum(len(split) for split in data.splits.values()) == SAMPLES
    assert data.input_shape == (8, 8, 1)
    metrics = json.loads((dvc_project / "metrics" / "metrics.json").read_text())
    predictions = np.load(dvc_project / "artifacts" / "predictions.npz")
    assert len(predictions["final"]) == len(data.test)
    assert metrics["final"]["accuracy"] == pytest.approx(
        np.mean(predictions["final"] == data.test.labels))
    sample = data.train.read(slice(1))[0]  # no copy of it, as float32 or as pixels, anywhere
    copies = (sample.tobytes(), np.round(sample * 255).astype(np.uint8).tobytes())
    written = [path for folder in ("artifacts", ".dvc/cache") if (dvc_project / folder).is_dir()
               for path in (dvc_project / folder).rglob("*") if path.is_file()]
    assert len(written) > 10
    assert not [path for path in written if any(copy in path.read_bytes() for copy in copies)]


def test_records_read_as_the_image_folder_they_were_written_from(digits, tmp_path):
    grey = {"color_mode": "grayscale"}
    folder = load_data(DataConfig(source=_image_folder(digits, tmp_path), **grey), 0)
    records = load_data(DataConfig(source=_records(digits, tmp_path), **grey), 0)
    def samples(data: Dataset) -> list[tuple[int, bytes]]:
        return sorted((y, bytes(x)) for split in data.splits.values()
                      for y, x in zip(split.labels, split.read(), strict=True))

    assert len(samples(records)) == SAMPLES
    assert samples(records) == samples(folder)


def test_records_without_labels_are_a_pool_decoded_as_the_labeled_images(digits, tmp_path):
    (tmp_path / "pool").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / "pool" / "unlabeled.tfrecord")) as writer:
        for i in range(SAMPLES, SAMPLES + 20):
            png = tf.train.BytesList(value=[_png(_pixels(digits, i))])
            writer.write(_example(image=tf.train.Feature(bytes_list=png)))
    data = load_data(DataConfig(source=_image_folder(digits, tmp_path), color_mode="grayscale",
                                unlabeled=f"tfrecord:{tmp_path / 'pool'}"), 0)
    read = np.concatenate([part.read() for part in data.pool.parts.values()])
    assert read.shape == (20, 8, 8, 1)
    assert (sorted(bytes(x) for x in np.round(read * 255).astype(np.uint8))
            == sorted(bytes(_pixels(digits, i)) for i in range(SAMPLES, SAMPLES + 20)))


def test_a_list_feature_is_read_in_the_declared_shape(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((30, 12)).astype(np.float32)
    with tf.io.TFRecordWriter(str(tmp_path / "features.tfrecord")) as writer:
        for i, row in enumerate(values):
            writer.write(_example(x=tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                                  y=tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))))
    cfg = {"source": f"tfrecord:{tmp_path / 'features.tfrecord'}", "record_input": "x",
           "record_label": "y"}
    data = load_data(DataConfig(**cfg, record_shape=[3, 4]), 0)
    assert data.input_shape == (3, 4)
    read = np.concatenate([split.read().reshape(-1, 12) for split in data.splits.values()])
    assert sorted(map(bytes, read)) == sorted(map(bytes, values))
    with pytest.raises(InputError, match=r"data.record_shape: .* a list of 12 values; give its "
                                         r"sample shape \(e.g. \[12\]\)"):
        load_data(DataConfig(**cfg), 0)
    with pytest.raises(InputError, match=r"data.record_label: record .*features.tfrecord \(record "
                                         r"at byte 12\) has no int64_list feature `label` \(it has "
                                         r"\['x', 'y'\]\)"):
        load_data(DataConfig(**(cfg | {"record_label": "label"}), record_shape=[12]), 0)


def test_a_truncated_record_file_is_named_before_any_training(tmp_path):
    path = tmp_path / "cut.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_example(label=tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match=r"cut.tfrecord ends inside the record at byte 12"):
        load_data(DataConfig(source=f"tfrecord:{path}"), 0)
