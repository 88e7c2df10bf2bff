"""Is each configured store reachable, with the credentials the environment holds? Checked before
anything starts or trains; a failure is an `InputError` naming the key, the URL and the fix.

Configuration holds URLs only. Passwords come from the standard environment variables: PGPASSWORD
(libpq and asyncpg read it), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (boto3), and
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's client, for a basic-auth server).
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from tasks.errors import InputError

CONNECT_TIMEOUT_S = 5
ASYNCPG = "postgresql+asyncpg://"
POSTGRES = "postgresql://"
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def check_postgres(key: str, url: str) -> None:
    """Connect once to the database at `url` (SQLAlchemy's `+asyncpg` form accepted)."""
    import psycopg

    try:
        psycopg.connect(url.replace(ASYNCPG, POSTGRES), connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        fix = ("set PGPASSWORD to the database user's password" if "password" in reason
               else "start the database server or correct the URL")
        raise InputError(f"{key}: cannot connect to PostgreSQL at {url}: {reason}; {fix}") from None


def check_s3(key: str, url: str, endpoint: str | None) -> None:
    """The bucket of `url` (s3://BUCKET/PREFIX) exists and the environment's keys may read it."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket = urlsplit(url).netloc
    where = f"{url} (endpoint {endpoint or 'AWS'})"
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=CONNECT_TIMEOUT_S,
        retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise InputError(f"{key}: no S3 credentials for {where}; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        fix = (f"create the bucket {bucket!r}" if code in ("404", "NoSuchBucket") else
               "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        raise InputError(f"{key}: S3 refused {where} ({code}); {fix}") from None
    except BotoCoreError as exc:
        raise InputError(f"{key}: cannot reach S3 at {where}: {exc}; start the store or correct "
                         "the endpoint") from None


def check_http(key: str, url: str, health: str) -> None:
    """`url` answers at `health` and accepts the MLflow credentials of the environment, if any."""
    request = urllib.request.Request(f"{url.rstrip('/')}/{health}")
    user, password = (os.environ.get(name) for name in MLFLOW_CREDENTIALS)
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            variables = " and ".join(MLFLOW_CREDENTIALS)
            raise InputError(f"{key}: {url} refused the credentials (HTTP {exc.code}); set "
                             f"{variables} to a user of that server") from None
        raise InputError(f"{key}: {url} answered HTTP {exc.code} at /{health}") from None
    except OSError as exc:
        raise InputError(f"{key}: cannot reach {url}: {getattr(exc, 'reason', exc)}; start the "
                         "server or correct the URL") from None


def check_tracking_uri(key: str, uri: str) -> None:
    """An MLflow tracking URI that leaves the machine's files: its server or database answers."""
    if uri.startswith(POSTGRES):
        check_postgres(key, uri)
    elif uri.startswith(("http://", "https://")):
        # An authenticated endpoint: with basic auth on, wrong or missing credentials show here.
        check_http(key, uri, "api/2.0/mlflow/experiments/search?max_results=1")
