"""metrics.json as one typed record (tasks/measurements.py): a document in its layout reads back
to the very same document, and the readers take the record."""

import json
from dataclasses import replace

from flows.record.report import candidate_rows, headline_line, summary_table
from tasks.measurements import CandidateMetrics, Comparison, RunMetrics, human_size, percent

FINAL = {"accuracy": 0.975, "params": 6090, "sparsity": 0.8, "tflite_bytes": 12400,
         "gzip_bytes": 3780, "latency_p50_us": 3.0, "latency_p90_us": 3.3,
         "memory_bytes": 81920.0, "blocks_2_4": 1.0, "xnnpack": 1.0,
         "latency_p50_us_1t": 3.0, "latency_p90_us_1t": 3.3,
         "latency_p50_us_4t": 2.5, "latency_p90_us_4t": 2.9}
TEACHER = {"accuracy": 0.9805555555555555, "params": 101770, "tflite_bytes": 409024,
           "gzip_bytes": 378000, "latency_p50_us": 90.0, "latency_p90_us": 99.0,
           "memory_bytes": 1236992.0, "blocks_2_4": 0.0, "xnnpack": 1.0,
           "latency_p50_us_1t": 90.0, "latency_p90_us_1t": 99.0,
           "latency_p50_us_4t": 41.2, "latency_p90_us_4t": 45.0}
METRICS_JSON = {  # as the evaluate stage writes it: 353 and 351 of 360 test samples right
    "teacher": TEACHER,
    "final": FINAL,
    "candidates": {"teacher": TEACHER | {"sparsity": 0.0}, "final": FINAL},
    "compression_ratio": 100.0,
    "speedup": 30.0,
    "accuracy_drop": 0.005555555555555536,
    "paired": {"n": 360, "worse": 3, "better": 1, "confidence": 0.95,
               "drop": 0.005555555555555556, "upper": 0.018224255773037042,
               "lower": -0.004904914160711449},
    "accuracy_drop_upper": 0.018224255773037042,
    "quantization": {"mode": "int8", "layer_precisions": {"int8": 4}},
    "slowdown": {"ratio": 0.033, "lower": 0.032, "upper": 0.034, "model_us": 3.0,
                 "reference_us": 90.0, "rounds": 20, "confidence": 0.95, "threads": 1},
    "slowest_ops": [{"index": 0, "op": "CONV_2D", "us": 1.8, "share": 0.6, "last": None},
                    {"index": 2, "op": "PAD+CONV_2D", "us": 0.9, "share": 0.3, "last": 3}],
    "task": "classification",
    "fidelity": {"n": 2000, "disagree": 3},
}
RECORD = RunMetrics.from_json(METRICS_JSON)


def test_metrics_json_reads_back_to_the_same_document(tmp_path):
    assert RECORD.to_json() == METRICS_JSON
    RECORD.write(tmp_path / "metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text()) == METRICS_JSON
    assert RunMetrics.read(tmp_path / "metrics.json") == RECORD
    without_pool = {key: value for key, value in METRICS_JSON.items() if key != "fidelity"}
    assert RunMetrics.from_json(without_pool).to_json() == without_pool
    assert RECORD.final.thread_counts() == [1, 4] and RECORD.final.latency_at(4) == (2.5, 2.9)
    row = FINAL | RECORD.comparison.as_dict() | {"wall_s": 1.5}  # a bench row: more keys
    assert CandidateMetrics.from_dict(row) == RECORD.final


def test_a_tasks_other_scores_sit_beside_the_accuracy_and_read_back():
    tagger = FINAL | {"label_accuracy": 0.99, "macro_f1": 0.97}  # a multi-label model's
    measured = CandidateMetrics.from_dict(tagger)
    assert measured.scores == {"label_accuracy": 0.99, "macro_f1": 0.97}
    assert measured.as_dict() == tagger


def test_the_readers_take_the_record():
    assert RECORD.comparison == Comparison(100.0, 30.0, 0.005555555555555536)
    table = summary_table(RECORD)
    assert "gzip size" in table and "100.0x smaller" in table
    assert "latency p50 / p90, 4 threads" in table and "41.2 / 45.0 us" in table
    assert "-0.56 pt (drop <= 1.82 pt at 95 %)" in table
    assert "runs on" not in table  # XNNPACK ran both
    refused = replace(RECORD, candidates=RECORD.candidates | {
        "final": replace(RECORD.final, xnnpack=0.0)})
    assert "XNNPACK refused it" in summary_table(refused)
    flat = RECORD.headline()  # MLflow's: the headline as it reads, the candidates as measured
    assert (flat["fidelity.disagree"], flat["final.latency_p50_us_4t"]) == (3, 2.5)
    assert {key: flat[key] for key in ("compression_ratio", "speedup", "accuracy_drop_pt",
                                       "accuracy_drop_upper_pt")} == {
        "compression_ratio": 100.0, "speedup": 30.0, "accuracy_drop_pt": 0.56,
        "accuracy_drop_upper_pt": 1.82}
    assert "accuracy_drop" not in flat  # a fraction, where every text says points
    assert headline_line(RECORD.comparison, promoted=True, certified=False) == (
        "promoted UNCERTIFIED: 100.0x smaller (gzip), 30.0x faster, accuracy drop +0.56 pt")


def test_the_candidates_table_is_in_the_reports_units():
    final = {row["candidate"]: row for row in candidate_rows(RECORD)}["final"]
    assert final == {"candidate": "final", "accuracy": "97.50 %", "params": "6,090",
                     "sparsity": "80.00 %", ".tflite size": "12.1 KiB", "gzip size": "3.7 KiB",
                     "latency p50 / p90, 1 thread": "3.0 / 3.3 us",
                     "latency p50 / p90, 4 threads": "2.5 / 2.9 us", "runtime memory": "80.0 KiB",
                     "2:4 blocks": "100.00 %", "runs on": "XNNPACK"}


def test_the_headline_is_logged_as_it_reads():
    shown = Comparison(240.32143978235848, 36.99172633253779, 0.0027777777777777).shown()
    assert shown == {"compression_ratio": 240.3, "speedup": 37.0, "accuracy_drop_pt": 0.28}
    assert Comparison(3.0, 0.38461538, -1e-18).shown()["speedup"] == 0.385
    assert str(Comparison(3.0, 1.0, -1e-18).shown()["accuracy_drop_pt"]) == "0.0"  # not -0.0


def test_people_read_sizes_and_shares():
    assert (human_size(900), human_size(16578), human_size(3 * 1024**2)) == (
        "900 B", "16.2 KiB", "3.00 MiB")
    assert percent(0.9805555555555555) == "98.06 %"
