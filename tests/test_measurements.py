"""metrics.json as one typed record (tasks/measurements.py): a document in its layout reads back
to the very same document, and the readers take the record."""

import json
from dataclasses import replace

from flows.record.report import headline_line, summary_table
from tasks.measurements import CandidateMetrics, Comparison, RunMetrics

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
    flat = RECORD.headline()  # MLflow's
    assert (flat["fidelity.disagree"], flat["final.latency_p50_us_4t"]) == (3, 2.5)
    assert Comparison.from_dict(flat) == RECORD.comparison  # a repeat's headline reads it back
    assert headline_line(RECORD.comparison, promoted=True, certified=False) == (
        "promoted UNCERTIFIED: 100.0x smaller (gzip), 30.0x faster, accuracy drop +0.56 pt")
