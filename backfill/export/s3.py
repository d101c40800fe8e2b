"""The S3 client of the export backfill, built like ``livemigrate.aws.make_clients`` builds the
others (same endpoint, region and retry settings); the CLI builds it, engines take it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import boto3

from livemigrate.aws import client_config
from livemigrate.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def make_s3_client(settings: Settings, max_pool: int = 50) -> S3Client:
    """An S3 client for the configured endpoint (moto, LocalStack or AWS)."""
    kwargs: dict[str, Any] = {"config": client_config(max_pool, settings.retry_mode)}
    region = settings.region or os.environ.get("AWS_REGION")
    if region:
        kwargs["region_name"] = region
    if settings.use_localstack:
        import localstack_client.session

        session: Any = localstack_client.session.Session()
    else:
        session = boto3.session.Session()
        if settings.endpoint_url:
            kwargs["endpoint_url"] = settings.endpoint_url
    client: S3Client = session.client("s3", **kwargs)
    return client
