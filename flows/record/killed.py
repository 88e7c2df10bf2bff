"""Runs a killed process left open, closed when the next run takes the workspace: KILLED in
MLflow, Crashed in Prefect."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from flows.record.tracking import KILLED_TAG, close_killed_runs
from tasks.config import TrackingConfig


def close_killed(tracking: TrackingConfig, root: Path) -> None:
    """Close the runs of this workspace that a killed process left RUNNING: in MLflow (KILLED),
    and in Prefect (Crashed), when its flow run is on this Prefect server."""
    for killed in close_killed_runs(tracking, root):
        note = killed.data.tags[KILLED_TAG]
        get_run_logger().warning("MLflow run %s %s", killed.info.run_id, note)
        flow_run_id = killed.data.tags.get("prefect.flow_run_id")
        if flow_run_id:
            crash_flow_run(flow_run_id, note)


def crash_flow_run(flow_run_id: str, note: str) -> None:
    """Set the flow run Crashed if Prefect still has it Running. A flow run of another server
    (the temporary one, then the stack's) is not found here and is left alone."""
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(UUID(flow_run_id)).state
        except ObjectNotFound:
            return
        if state and state.is_running():
            client.set_flow_run_state(UUID(flow_run_id), Crashed(message=note), force=True)
