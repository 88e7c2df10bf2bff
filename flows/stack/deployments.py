"""The nightly deployment of `compress`: served by `shrinkflow up` (`shrinkflow serve`), or
deployed with `shrinkflow deploy` to infra/prefect.yaml's work pool, for `prefect worker`s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from flows.stack.config import StackConfig
from tasks.config import Params
from tasks.errors import InputError

PREFECT_FILE = Path("infra") / "prefect.yaml"


def deploy(params: Params, stack: StackConfig, root: Path) -> int:
    """`prefect deploy` the deployment of infra/prefect.yaml to its work pool, on the schedule
    `serve` gives it too (stack.cron in stack.timezone), with `nightly_parameters` as the run
    form's defaults (a scheduled run uses them).

    Gotchas: the file holds no schedule, as Prefect adds `--cron` to the file's own; and it holds
    one deployment, as Prefect ignores these options when it deploys several. A redeploy replaces
    the schedule."""
    prefect_file = root / PREFECT_FILE
    check_work_pools(prefect_file)
    defaults = nightly_parameters(params, root)
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                           "--prefect-file", str(prefect_file), "--params", json.dumps(defaults),
                           "--cron", stack.cron, "--timezone", stack.timezone],
                          cwd=root).returncode


def check_work_pools(prefect_file: Path) -> None:
    """Every work pool the deployments of `prefect_file` name exists on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    deployments = yaml.safe_load(prefect_file.read_text())["deployments"]
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            pool = deployment["work_pool"]["name"]
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                raise InputError(
                    f"{prefect_file}: deployment {deployment['name']!r} names work pool {pool!r}, "
                    f"which does not exist on {PREFECT_API_URL.value()}; create it with "
                    f"`prefect work-pool create {pool} --type process`") from None
            except OSError as exc:
                raise InputError(f"PREFECT_API_URL: cannot reach {PREFECT_API_URL.value()}: "
                                 f"{exc}; start the Prefect server or set the URL") from None


def nightly_parameters(params: Params, root: Path) -> dict:
    """The nightly deployment's defaults, served or deployed: the project's params with the search
    on (a night has time to search; `shrinkflow run` has not), the project directory, and a
    night in which nothing changed recorded as a repeat."""
    nightly = params.model_dump(mode="json")
    nightly["search"]["enabled"] = True
    return {"params": nightly, "workdir": str(root.resolve()), "repeat_unchanged": True}


def serve(params: Params, stack: StackConfig) -> None:
    """Apply the notification automations, then serve `compress/nightly` on its cron; the
    project's params, with the search on, are the form's defaults.

    The schedule is not paused on shutdown, so it survives a restart of the stack. At most one
    compression runs at a time: further runs wait in Prefect's queue.
    """
    from prefect import serve as prefect_serve
    from prefect.schedules import Cron

    from flows.compress import compress
    from flows.record.notifications import apply_notifications

    print(apply_notifications(Path.cwd()), flush=True)

    deployment = compress.to_deployment(
        name="nightly",
        schedules=[Cron(stack.cron, timezone=stack.timezone)],
        concurrency_limit=1,
        parameters=nightly_parameters(params, Path.cwd()),
        description="Nightly compression of the configured teacher (params.yaml).",
    )
    prefect_serve(deployment, pause_on_shutdown=False)
