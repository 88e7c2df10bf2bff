"""The project's configuration as every command reads it: params.yaml's run parameters and its
`stack:` section (`shrinkflow up`, `serve`, `deploy`), validated together at the door
(`load_config`), so a bad value anywhere in the file is refused before any command does work.

The stack is not a run parameter: a run gets `Config.params` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import available_timezones

from pydantic import AfterValidator, Field, field_validator

from flows.workspace.params import (
    DEFAULT_PARAMS,
    STACK,
    read_with_overrides,
    split_stack,
    validated,
)
from tasks.config import Params, SecretFreeUrl, Section

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# stack.cron is checked by cronsim (already installed with Prefect's docket), not by Prefect:
# importing Prefect fixes its settings, PREFECT_API_URL among them, which `run` sets after the
# door when the stack is up (flows/stack/servers.py `use_running_stack`), and takes a second of
# a run that only repeats.

def url_scheme(*schemes: str):
    """A validator: the URL starts with one of `schemes`."""
    def check(url: str | None) -> str | None:
        if url is not None and not url.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")
        return url
    return AfterValidator(check)


class StackConfig(Section):
    """The stack (`shrinkflow up`): not a run parameter, read from params.yaml's `stack:`.

    The stores default to sqlite files and local artifacts (one machine); a team points them at
    PostgreSQL and S3 (infra/README.md). URLs only: passwords come from the environment.
    """

    host: str = Field(
        "127.0.0.1",
        description="Address both servers listen on; any other than loopback needs credentials "
        "in the environment (PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD).",
    )
    prefect_port: Annotated[int, Field(ge=1, le=65535)] = Field(4200, description="Prefect UI/API.")
    mlflow_port: Annotated[int, Field(ge=1, le=65535)] = Field(5000, description="MLflow UI/API.")
    cron: str = Field(
        "0 2 * * *",
        description="Schedule of the nightly deployment: five cron fields, minute hour "
        "day-of-month month day-of-week, each *, a number or name (jan, mon), a range a-b, a "
        "step /n or a list a,b.",
    )
    timezone: str = Field("UTC", description="Time zone of the cron schedule (IANA name).")
    serve: bool = Field(
        True,
        description="Serve the nightly deployment from `up` itself; off when `prefect worker`s "
        "run it from a work pool (`shrinkflow deploy`).",
    )
    prefect_database: Annotated[SecretFreeUrl | None, url_scheme("postgresql+asyncpg://")] = Field(
        None,
        description="Prefect server database `postgresql+asyncpg://USER@HOST:PORT/DB` "
        "(password: PGPASSWORD); none = sqlite under .shrinkflow/prefect.",
    )
    mlflow_backend: Annotated[SecretFreeUrl | None, url_scheme("postgresql://")] = Field(
        None,
        description="MLflow server backend store `postgresql://USER@HOST:PORT/DB` (password: "
        "PGPASSWORD); none = the `tracking.uri` sqlite file.",
    )
    artifacts: Annotated[SecretFreeUrl | None, url_scheme("s3://")] = Field(
        None,
        description="MLflow server artifact store `s3://BUCKET/PREFIX` (keys: AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY); none = mlartifacts/ beside the sqlite file.",
    )
    s3_endpoint: SecretFreeUrl | None = Field(
        None, description="URL of an S3-compatible store (MinIO, ...); none = AWS S3."
    )

    @field_validator("cron")
    @classmethod
    def _five_cron_fields(cls, cron: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(cron, datetime.now())
        except CronSimError as exc:
            raise ValueError(f"{exc}: give five fields, minute hour day-of-month month "
                             "day-of-week, e.g. `0 2 * * *` (02:00 every day)") from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _iana_name(cls, name: str) -> str:
        if name not in available_timezones():  # Prefect's own rule
            raise ValueError("not an IANA time zone name; use e.g. `UTC` or `Europe/Berlin`")
        return name


@dataclass(frozen=True)
class Config:
    """All of params.yaml: the run parameters and the stack's section, and the command-line
    arguments that read it again (`up` hands them to the `serve` it starts)."""

    params: Params
    stack: StackConfig
    args: tuple[str, ...]


def load_config(path: Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Config:
    """params.yaml with `--set KEY=VALUE` overrides, every section validated once, every problem
    in one error: what each command reads at the door, before any work."""
    run, stack = split_stack(read_with_overrides(path, overrides))
    params, stack_config = validated((Params, run, ""), (StackConfig, stack, STACK))
    sets = (arg for override in overrides for arg in ("--set", override))
    return Config(params, stack_config, ("--params", str(path), *sets))
