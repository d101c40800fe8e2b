"""AWS clients, built once at the edge (CLI, Lambda handler, tests) and injected everywhere else.

The same code reaches moto's server, LocalStack or AWS: only the endpoint differs. boto3 reads
``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / credentials itself; ``Settings.endpoint_url`` overrides,
and ``use_localstack`` builds the clients through localstack-client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import NoRegionError

from livemigrate.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_ssm import SSMClient

    from livemigrate.config import Settings


@dataclass(frozen=True)
class AwsClients:
    """The clients livemigrate uses; thread-safe, shared by all worker threads."""

    dynamodb: DynamoDBClient
    streams: DynamoDBStreamsClient
    ssm: SSMClient
    # The change source when it is a Kinesis data stream (change_source = "kinesis").
    kinesis: KinesisClient | None = None


RetryMode = Literal["standard", "adaptive"]


def client_config(
    max_pool: int = 50, retry_mode: RetryMode = "standard", *, validate: bool = True
) -> Config:
    """The botocore configuration of every client (``retry_mode``: the ``retry_mode`` setting;
    ``validate``: botocore's client-side parameter validation).

    botocore retries each call itself: throttling, 5xx, connection errors and timeouts, 5
    retries (6 attempts) with jittered exponential back-off (``standard``); ``adaptive`` also
    rate-limits the client when the service throttles. Every attempt passes the client's
    ``before-send`` hooks, so a fence (``livemigrate.fencing``) refuses a retry past a lease's
    deadline, after any wait of the adaptive rate limit. The tool's own loops stay above it:
    the rate caps and their throttling back-off (``livemigrate.ratelimit``: items/s, budget
    deadlines) and riding out an outage that outlasts botocore's attempts
    (``livemigrate.outage``).
    """
    return Config(
        retries={"max_attempts": 5, "mode": retry_mode},
        max_pool_connections=max_pool,
        connect_timeout=5,
        read_timeout=30,
        parameter_validation=validate,
    )


def make_clients(settings: Settings | None = None, max_pool: int = 50) -> AwsClients:
    """Build the clients for the configured endpoint (moto, LocalStack or AWS)."""
    mode: RetryMode = settings.retry_mode if settings is not None else "standard"
    kwargs: dict[str, Any] = {"config": client_config(max_pool, mode)}
    # boto3 reads AWS_DEFAULT_REGION but not every version reads AWS_REGION; honour both.
    region = (settings.region if settings else None) or os.environ.get("AWS_REGION")
    if region:
        kwargs["region_name"] = region
    if settings is not None and settings.use_localstack:
        import localstack_client.session

        session: Any = localstack_client.session.Session()
    else:
        session = boto3.session.Session()
        if settings is not None and settings.endpoint_url:
            kwargs["endpoint_url"] = settings.endpoint_url
    # The DynamoDB client skips botocore's parameter validation (a documented performance
    # setting): it was a tenth of the client's CPU per backfill put (issue 18), and every
    # request is built here from input checked before it: table names by Settings, items by
    # the transform's output check and TypeSerializer. DynamoDB still validates each request.
    fast = {**kwargs, "config": client_config(max_pool, mode, validate=False)}
    try:
        return AwsClients(
            dynamodb=session.client("dynamodb", **fast),
            streams=session.client("dynamodbstreams", **kwargs),
            ssm=session.client("ssm", **kwargs),
            kinesis=session.client("kinesis", **kwargs),
        )
    except NoRegionError as exc:
        raise ConfigError(
            "no AWS region is configured",
            "set AWS_REGION (or AWS_DEFAULT_REGION, or 'region' in livemigrate.toml)",
        ) from exc
