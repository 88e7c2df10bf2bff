"""Compute layer: one module per pipeline stage, plain typed functions plus a thin Prefect task.

tfmot only works with Keras 2 (tf_keras), so the switch below must run before TensorFlow is first
imported: every module that touches TensorFlow lives in this package, and importing any of them
runs this file first.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's default pools (one intra-op thread per core, and an inter-op pool as large) contend
# for the cores of a small machine: on 2 cores, one intra-op thread trained ResNet50's probe
# students 1.65-2.4x faster per epoch (docs/benchmarks.md, Threads, 2026-12-06).
# An explicit TF_NUM_INTRAOP_THREADS wins. Open: with pruning on, it also lowered the 57 k CNN's
# 0.354 probe in 9 of 10 seeds (kept 0.5 instead; same Threads section).
if (os.cpu_count() or 1) <= 2:  # as flows/search.py `tensorflow_threads` counts cores
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
