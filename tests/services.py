"""Addresses of the real local services the tests run against, and clients for them.

``make test`` starts moto's server and an Elasticsearch node (infra/services.sh) and exports
their addresses. A service that does not answer fails the test that needs it, with its name:
these tests never skip (with or without CI=true).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from livemigrate import tables
from livemigrate.aws import AwsClients, make_clients
from livemigrate.config import Settings
from livemigrate.records import StreamRecord
from livemigrate.tables import PK_SK

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def _moto_url() -> str:
    """This process's moto: under pytest-xdist each worker has a server of its own (Makefile)."""
    ports = os.environ.get("LIVEMIGRATE_TEST_MOTO_PORTS", "").split()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if ports and worker.startswith("gw"):
        return f"http://127.0.0.1:{ports[int(worker[2:]) % len(ports)]}"
    port = os.environ.get("LIVEMIGRATE_MOTO_PORT", "4599")
    return os.environ.get("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")


MOTO_URL = _moto_url()
ES_URL = os.environ.get(
    "LIVEMIGRATE_SEARCH_URL",
    f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_ES_PORT', '9299')}",
)

OS_URL = os.environ.get(
    "LIVEMIGRATE_TEST_OPENSEARCH_URL",
    f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_OS_PORT', '9399')}",
)
# The search engines the search tests run over, and where their nodes are.
ENGINE_URLS = {"elasticsearch": ES_URL, "opensearch": OS_URL}

# Tests talk to the local moto server only, never to AWS, whatever the shell says.
TEST_ENV = {
    "AWS_ENDPOINT_URL": MOTO_URL,
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "LIVEMIGRATE_SEARCH_URL": ES_URL,
}


def require(name: str, url: str) -> None:
    """Fail loudly (never skip) when a service the test needs is not answering."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(
            f"{name} is not reachable at {url} ({exc}); start it with `make services` "
            "(make test does this itself)"
        ) from exc


def aws_clients() -> AwsClients:
    os.environ.update(TEST_ENV)
    return make_clients(None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_table(
    client: DynamoDBClient,
    name: str,
    *,
    keys: tuple[tuple[str, str], ...] = PK_SK,
    stream: str | None = "NEW_AND_OLD_IMAGES",
) -> None:
    tables.create_table(client, name, keys, stream=stream, wait=False)


def scan_all(client: DynamoDBClient, table: str) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def settings_for(source: str, destination: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "migration_id": unique("mig"),
        "source_table": source,
        "destination_table": destination,
        "control_table": unique("control"),
        "search_url": ES_URL,
        **extra,
    }
    return Settings(**values)


class StreamTail:
    """Reads a table's stream with boto3 directly (the tests' own reader, not the engine)."""

    def __init__(self, clients: AwsClients, table: str) -> None:
        self.streams = clients.streams
        arn = clients.dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        shards = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        self.iterators = {
            s["ShardId"]: self.streams.get_shard_iterator(
                StreamArn=arn, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for s in shards
        }

    def poll(self, pages: int = 1) -> list[StreamRecord]:
        """Up to ``pages`` GetRecords calls per shard (bounded: writers may never pause)."""
        out: list[StreamRecord] = []
        for shard in list(self.iterators):
            for _ in range(pages):
                resp = self.streams.get_records(ShardIterator=self.iterators[shard], Limit=1000)
                out.extend(StreamRecord.from_boto(r, shard) for r in resp["Records"])
                self.iterators[shard] = resp.get("NextShardIterator", self.iterators[shard])
                if not resp["Records"]:
                    break
        return out

    def drain(self) -> list[StreamRecord]:
        return self.poll(pages=1_000_000)
