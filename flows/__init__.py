"""Flow layer: Prefect flows, MLflow runs, the CLI. The only layer that knows all the tools."""

import logging
import os

import tasks  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

# Prefect reads its settings at import: give the temporary server time to start on a busy
# 2-core machine, send no telemetry (there is no network), and route the compute layer's log
# records into Prefect's logs; those of the checks before a flow run starts (the task said, a
# thread count warned) go to the terminal only, without a UserWarning that no run holds them.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("tasks").setLevel(logging.INFO)  # Prefect adds its handlers, not a level
