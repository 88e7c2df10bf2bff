"""Nightly runs notice a new teacher or new data: inputs replaced in place re-run load onwards, and
`shrinkflow run`, `dvc status` and `dvc repro` agree; a touch re-runs nothing; a vanished input is
refused before any work; an input rewritten while it is read is retried by Prefect."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import tf_keras as keras
from mlflow import MlflowClient

import tasks.load
from conftest import SLICED
from flows import compress as compress_module
from flows.cli import main
from flows.compress import compress
from flows.stages import STAGES, run_stage
from flows.workspace.versioning import is_up_to_date, record_stage, write_params_file
from tasks.artifacts import Workspace
from tasks.data import load_data
from tasks.models import write_model
from test_versioning import md5, run

ALL_RAN = dict.fromkeys(STAGES, "ran")


def digits_npz(path: Path, start: int) -> Path:
    """400 digits from `start` on, as an npz file (x, y), aged past the quiet period."""
    full = load_data(SLICED, seed=0)
    np.savez(path, x=full.train.read(slice(start, start + 400)),
             y=full.train.labels[start:start + 400])
    return aged(path)


def aged(path: Path) -> Path:
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def dvc_status(root: Path) -> dict:
    return json.loads(run("dvc", "status", "--json", cwd=root))


def test_replaced_data_reruns_load_onwards_a_touch_nothing_and_a_vanished_file_is_refused(
    prefect_server, dvc_project, tiny_params, monkeypatch, capsys
):
    data = digits_npz(dvc_project / "nightly.npz", start=0)
    params = tiny_params(f"data.source=npz:{data}")
    reads = []

    def rewritten_on_first_read(*args, **kwargs):
        """The load stage's first read (after the pre-check's) meets a writer still at work: the
        file is written again meanwhile."""
        reads.append(1)
        if len(reads) == 2:
            data.write_bytes(data.read_bytes())
        return open_inputs(*args, **kwargs)

    open_inputs = tasks.load.open_inputs
    monkeypatch.setattr(tasks.load, "open_inputs", rewritten_on_first_read)
    monkeypatch.setattr(compress_module, "run_or_skip",
                        compress_module.run_or_skip.with_options(retry_delay_seconds=0))
    first = compress(params, workdir=str(dvc_project))
    assert len(reads) == 3 and first["stages"] == ALL_RAN  # Prefect retried load once
    assert first["inputs_changed"] == []
    monkeypatch.undo()
    assert dvc_status(dvc_project) == {}

    os.utime(data)  # same content, new modification time
    assert dvc_status(dvc_project) == {}
    assert compress(params, workdir=str(dvc_project))["stages"] == dict.fromkeys(STAGES, "skipped")

    old_md5 = md5(data)
    digits_npz(data, start=400)  # the nightly job writes new data in place
    assert "load" in dvc_status(dvc_project)  # DVC sees it by itself
    third = compress(params, workdir=str(dvc_project))
    assert third["stages"] == ALL_RAN
    assert third["inputs_changed"] == [
        f"data.source changed: md5 {old_md5[:8]}… → {md5(data)[:8]}…"]
    assert dvc_status(dvc_project) == {}
    tags = MlflowClient(params.tracking.uri).get_run(third["mlflow_run_id"]).data.tags
    assert tags["input.data.source.md5"] == md5(data)
    assert tags["input.data.source.path"] == str(data)
    headline, *changes = tags["mlflow.note.content"].split("\n\n")
    assert changes == third["inputs_changed"] and "x smaller (gzip)" in headline

    model = dvc_project / "artifacts" / "model.tflite"
    before = md5(model)
    data.unlink()
    monkeypatch.chdir(dvc_project)
    assert main(["run"]) == 2
    assert f"data.source: {data} does not exist" in capsys.readouterr().err
    assert md5(model) == before


def test_a_teacher_replaced_in_place_is_seen_by_dvc_and_the_flow_alike(
    prefect_server, dvc_project, tiny_params, tmp_path_factory
):
    teacher = tmp_path_factory.mktemp("models") / "teacher.h5"  # outside the project, as /models/
    write_model(small_teacher(hidden=16), teacher)
    params = tiny_params(f"model.source={aged(teacher)}")
    first = compress(params, workdir=str(dvc_project))
    assert first["metrics"]["teacher"]["params"] == small_teacher(hidden=16).count_params()

    write_model(small_teacher(hidden=48), teacher)  # retrained and overwritten by the training job
    aged(teacher)
    assert str(teacher) in json.dumps(dvc_status(dvc_project)["load"])
    assert "Running stage 'load'" in run("dvc", "repro", "load", cwd=dvc_project)  # DVC alone

    again = compress(params, workdir=str(dvc_project))  # the flow takes over where DVC stopped
    assert again["stages"] == ALL_RAN | {"load": "skipped"}
    assert again["metrics"]["teacher"]["params"] == small_teacher(hidden=48).count_params()
    assert dvc_status(dvc_project) == {}
    assert "Data and pipelines are up to date" in run("dvc", "repro", cwd=dvc_project)


def test_an_image_replaced_or_added_in_a_folder_changes_load_and_a_touch_does_not(
    dvc_project, tiny_params, monkeypatch
):
    folder = dvc_project / "pictures"
    full = load_data(SLICED, seed=0)
    for i in range(150):  # enough for every class in each split
        png = folder / str(full.train.labels[i]) / f"{i}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(png, full.train.read(slice(i, i + 1))[0] * 255, scale=False)
        aged(png)
    params = tiny_params(f"data.source=images:{folder}", "data.color_mode=grayscale")
    write_params_file(dvc_project, params)
    monkeypatch.chdir(dvc_project)
    run_stage("load", params, Workspace(dvc_project))  # what `dvc repro` runs, then records
    record_stage(dvc_project, "load")
    assert is_up_to_date(dvc_project, "load")

    one = next(folder.rglob("*.png"))
    content = one.read_bytes()
    keras.utils.save_img(one, np.zeros((8, 8, 1)), scale=False)
    assert not is_up_to_date(dvc_project, "load")
    one.write_bytes(content)  # back to the recorded content, at a new modification time
    assert is_up_to_date(dvc_project, "load")
    (one.parent / "extra.png").write_bytes(content)
    assert not is_up_to_date(dvc_project, "load")


def small_teacher(hidden: int) -> keras.Model:
    """A teacher trained a little on the digits: above chance, as the load stage requires."""
    keras.utils.set_random_seed(hidden)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])
    digits = load_data(SLICED, seed=0).train.subset(slice(500))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.read(), digits.labels, epochs=5, verbose=0)
    return model
