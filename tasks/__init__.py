"""Compute layer: one module per pipeline stage, plain typed functions plus a thin Prefect task.

tfmot only works with Keras 2 (tf_keras), so the switch below must run before TensorFlow is first
imported: every module that touches TensorFlow lives in this package, and importing any of them
runs this file first.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
