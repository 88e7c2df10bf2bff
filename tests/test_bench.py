"""`shrinkflow bench` on a tiny config: every recipe built, measured by the pipeline's evaluator,
written, and tracked in one MLflow run."""

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.bench import BENCH_JSON, BENCH_MD, BENCH_PLOT, bench_table, relocated_params, run_bench
from flows.cli import main
from flows.recipes import RECIPES
from flows.workspace.params import validate_params


def test_bench_measures_every_recipe_and_writes_and_tracks_the_table(
    tiny_params, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    params = tiny_params("search.trials=1", "search.workers=1")
    document = run_bench(params, tmp_path, overhead=False)

    rows = document["recipes"]
    assert list(rows) == list(RECIPES)
    for name, row in rows.items():
        assert 0 <= row["accuracy"] <= 1, name
        assert row["tflite_bytes"] > 0 and row["gzip_bytes"] > 0, name
        assert row["latency_p50_us"] > 0 and row["wall_s"] > 0, name
        assert 0 < row["latency_p50_us_4t"] <= row["latency_p90_us_4t"], name  # evaluate.threads
        assert row["memory_bytes"] > 0, name
    fp32 = rows["fp32"]
    assert (fp32["accuracy_drop"], fp32["compression_ratio"], fp32["speedup"]) == (0.0, 1.0, 1.0)
    for name in ("ptq-random-calib", "ptq-int8", "ptq-dynamic", "ptq-int16x8", "mixed",
                 "prune-ptq", "shrinkflow", "qat", "search"):
        assert rows[name]["tflite_bytes"] < fp32["tflite_bytes"] / 2, name
    assert rows["ptq-float16"]["tflite_bytes"] < fp32["tflite_bytes"] * 0.6
    assert rows["prune-ptq"]["sparsity"] == pytest.approx(0.8, abs=0.02)
    assert rows["shrinkflow"]["params"] < fp32["params"]  # the narrow student, not the teacher
    assert rows["qat"]["params"] == rows["shrinkflow"]["params"]  # the same student, QAT on top
    assert rows["qat"]["sparsity"] == pytest.approx(rows["shrinkflow"]["sparsity"], abs=0.002)
    assert "overhead" not in document

    assert json.loads((tmp_path / BENCH_JSON).read_text()) == document
    markdown = (tmp_path / BENCH_MD).read_text()
    labels = [name if name != "shrinkflow" else "shrinkflow (int8)" for name in RECIPES]
    assert all(f"| {label} |" in markdown for label in labels)  # the pipeline's row: its mode
    assert (tmp_path / BENCH_PLOT).stat().st_size > 0
    table = bench_table(document).splitlines()
    assert len(table) == 1 + len(RECIPES) and table[1].startswith("fp32 ")
    assert "p50 / p90, 1 thread" in table[0] and "p50 / p90, 4 threads" in table[0]
    assert "memory" in table[0]

    client = MlflowClient(params.tracking.uri)
    experiment = client.get_experiment_by_name("test")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'bench'")
    assert run.info.status == "FINISHED"
    for name, row in rows.items():
        assert run.data.metrics[f"{name}.accuracy"] == pytest.approx(row["accuracy"])
        assert run.data.metrics[f"{name}.wall_s"] == pytest.approx(row["wall_s"])
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    # the search row's trials.json and pareto.png, its trials nested under the bench run
    assert {"bench.json", "bench.md", "bench.png", "params.yaml", "search"} == logged


def test_a_project_copy_reads_the_same_inputs_and_tracks_in_its_own_store(tmp_path):
    params = validate_params({
        "data": {"source": "npz:data/digits.npz", "unlabeled": "images:data/unlabeled"},
        "model": {"source": "models/teacher.h5"},
        "distill": {"student": "~/student.h5"},
        "tracking": {"uri": "http://mlflow.example:5000"},
    })
    moved = relocated_params(params, tmp_path)
    assert moved.data.source == f"npz:{tmp_path.resolve() / 'data' / 'digits.npz'}"
    assert moved.data.unlabeled == f"images:{tmp_path.resolve() / 'data' / 'unlabeled'}"
    assert moved.model.source == str(tmp_path.resolve() / "models" / "teacher.h5")
    assert moved.distill.student == str(Path("~/student.h5").expanduser().resolve())
    assert moved.tracking.uri == "sqlite:///mlflow.db"
    assert params.data.source == "npz:data/digits.npz"  # the original is left alone
    defaults = relocated_params(validate_params({}), tmp_path)
    assert (defaults.data.source, defaults.data.unlabeled, defaults.model.source) == (
        "digits", None, "train")


def test_the_help_lists_every_recipe_of_the_registry_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    recipes = capsys.readouterr().out.split("\nrecipes:\n")[1]
    assert re.findall(r"^  (\S+) ", recipes, re.M) == list(RECIPES)
    assert " ".join(recipes.split()).endswith(" ".join(RECIPES["search"].__doc__.split()))
