"""Compute layer: plain typed functions that take config sections and paths and return values.

A module per stage (load, sparsify, distill, quantize, evaluate; the search's trials in search.py)
holds its `run_<stage>` function; the modules beside them hold what stages share (config, data
and splits, model files, students and teaching, the LiteRT runner, the gate's rules and
statistics, the typed measurements). Nothing here knows Prefect, MLflow, DVC or the search's
Optuna study: flows/ wraps these functions in tasks and flows and records what they return
(tests/test_layout.py holds the tree to it).

tfmot only works with Keras 2 (tf_keras), so the switch below must run before TensorFlow is first
imported: every module that touches TensorFlow lives in this package, and importing any of them
runs this file first.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow splits each op across one intra-op thread per core by default; on 2 cores a narrow
# student's ops are too small for it: one intra-op thread trained ResNet50's probe students
# 1.65-2.4x faster per epoch, and small CNNs as fast (docs/benchmarks.md, Threads, 2026-12-06).
# The thread count changes training's float results, so a probe at the gate's threshold can land
# either side; on fresh seeds its chances spread the same with one thread as with two (same
# section).
# An explicit TF_NUM_INTRAOP_THREADS wins.
if (os.cpu_count() or 1) <= 2:  # as flows/search.py `tensorflow_threads` counts cores
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
