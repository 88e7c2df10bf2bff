"""Input files tracked by content: the derived `inputs:` section DVC reads, steady reading, what
is retried, how changes are reported. The flow-level cases are in test_input_changes.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException

from flows.cli import main
from flows.record.report import input_changes
from flows.retry import is_transient
from flows.workspace.versioning import Fingerprint, inputs_section
from tasks.config import Params
from tasks.errors import InputChanged, InputError
from tasks.inputs import read_steadily, wait_until_settled


def aged(path: Path, seconds: float = 60) -> Path:
    """Make `path` look written `seconds` ago (no writer at work)."""
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_the_inputs_section_names_each_file_and_a_stage_module_for_built_ins():
    params = Params.model_validate({
        "data": {"source": "images:~/pictures", "unlabeled": "tfrecord:/shared/unlabeled"},
        "model": {"source": "models/teacher.keras"},
        "distill": {"student": "/shared/student.h5"},
    })
    assert inputs_section(params) == {
        "data": {"source": str(Path("~/pictures").expanduser()),
                 "unlabeled": "/shared/unlabeled"},
        "model": {"source": "models/teacher.keras", "weights": "tasks/load.py"},
        "distill": {"student": "/shared/student.h5"},
    }
    builtin = inputs_section(Params.model_validate({"model": {"source": "keras.applications.MobileNetV2"}}))
    assert builtin == {"data": {"source": "tasks/load.py", "unlabeled": "tasks/load.py"},
                       "model": {"source": "tasks/load.py", "weights": "tasks/load.py"},
                       "distill": {"student": "tasks/distill.py"}}


def test_a_stage_refuses_a_hand_edited_source_that_dvc_would_not_track(dvc_project, monkeypatch, capsys):
    monkeypatch.chdir(dvc_project)
    params_file = dvc_project / "params.yaml"
    text = params_file.read_text()
    source = text.split("source: npz:")[1].split("\n")[0]
    params_file.write_text(text.replace(f"source: npz:{source}", "source: npz:/elsewhere/new.npz", 1))
    assert main(["stage", "load"]) == 2
    err = capsys.readouterr().err
    assert "inputs.data.source out of step with data.source" in err and "shrinkflow init" in err
    assert not (dvc_project / "artifacts").exists()

    assert main(["init"]) == 0  # brings the section in step
    assert "inputs:\n  data:\n    source: /elsewhere/new.npz" in params_file.read_text()


def test_reading_a_steady_file_passes_and_a_rewrite_while_reading_is_caught(tmp_path):
    data = tmp_path / "data.npz"
    data.write_bytes(b"v1")
    aged(data)
    with read_steadily({"data.source": data, "model.weights": None}):
        data.read_bytes()
    with pytest.raises(InputChanged, match=r"data.source: .*data.npz changed while it was being read"):
        with read_steadily({"data.source": data}):
            data.write_bytes(b"v2")


def test_a_file_added_to_an_input_folder_counts_as_a_change(tmp_path):
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"png")
    aged(folder / "cat" / "1.png")
    with pytest.raises(InputChanged, match="data.source"):
        with read_steadily({"data.source": folder}):
            (folder / "cat" / "2.png").write_bytes(b"png")


def test_a_file_still_being_written_is_read_only_once_it_has_been_quiet(tmp_path):
    teacher = tmp_path / "teacher.h5"
    teacher.write_bytes(b"half a model")  # modified just now: a writer may still be at work
    started = time.monotonic()
    wait_until_settled({"model.source": teacher}, quiet=1.0)
    assert time.monotonic() - started >= 1.0  # watched it for the quiet period first
    in_an_hour = time.time() + 3600  # a skewed clock on a shared mount: settled once unchanged
    os.utime(teacher, (in_an_hour, in_an_hour))
    wait_until_settled({"model.source": teacher}, quiet=0.5)
    with pytest.raises(InputChanged, match="model.source: still being modified"):
        os.utime(teacher)
        wait_until_settled({"model.source": teacher}, quiet=5.0, timeout=0.5)


def test_only_failures_that_may_pass_are_retried():
    try:
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded")
        except requests.exceptions.ConnectionError:
            raise MlflowException("API request to http://mlflow/api failed") from None
    except MlflowException as exc:
        unreachable = exc
    assert unreachable.__cause__ is None and is_transient(unreachable)  # found via __context__
    assert is_transient(InputChanged("data.source changed"))
    assert not is_transient(InputError("data.source: /x does not exist"))
    assert not is_transient(ValueError("a bug"))


def test_changes_name_the_key_and_both_digests():
    before = {"model.source": Fingerprint("/m/teacher.h5", "f914ab12" + "0" * 24),
              "data.source": Fingerprint("/d/x.npz", "aa" * 16)}
    after = {"model.source": Fingerprint("/m/teacher.h5", "2f11cd34" + "0" * 24),
             "data.source": Fingerprint("/d/y.npz", "bb" * 16 + ".dir"),
             "model.weights": Fingerprint("/w.h5", "cc" * 16)}  # new this run: nothing to compare
    assert input_changes(before, after) == [
        "model.source changed: md5 f914ab12… → 2f11cd34…",
        "data.source changed: /d/x.npz → /d/y.npz, md5 aaaaaaaa… → bbbbbbbb….dir",
    ]
    assert input_changes(after, after) == []
