"""The stack's configuration (`shrinkflow up`, `serve`, `deploy`): params.yaml's `stack:` section.

It is not a run parameter: `load_params` leaves it out, `load_stack` reads it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from flows.workspace.params import DEFAULT_PARAMS, STACK, read_with_overrides, validated
from tasks.config import SecretFreeUrl, Section

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    cron: str = Field("0 2 * * *", description="Schedule of the nightly deployment.")
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

    @model_validator(mode="after")
    def _valid_schedule(self) -> StackConfig:
        from prefect.client.schemas.schedules import CronSchedule  # Prefect's own rules

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValueError as exc:
            raise ValueError(
                f"cron {self.cron!r} / timezone {self.timezone!r}: "
                f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}; use "
                "e.g. cron `0 2 * * *` and an IANA time zone such as `UTC` or `Europe/Berlin`"
            ) from None
        return self


def load_stack(path: Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> StackConfig:
    """The `stack:` section, with `--set stack.KEY=VALUE` overrides."""
    raw = read_with_overrides(path, overrides).get(STACK) or {}
    return validated(StackConfig, raw, section=STACK)
