"""Helpers shared by the backfill tests (no tests here): source data, runs, comparisons.

The comparison is independent of the engine: it scans the source, applies the transform itself
and compares with a scan of the destination without livemigrate's ``_lm_*`` attributes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.cli import main
from livemigrate.config import Settings
from livemigrate.examples.hot_outbox import transform as hot_outbox
from livemigrate.items import to_json, to_plain, to_typed
from livemigrate.versioning import RESERVED_PREFIX
from tests.services import TEST_ENV, create_table, scan_all, settings_for, unique

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

HOT = "section-outbox|docket"
T0 = 1_700_000_000


def outbox_items(count: int, hot_share: float = 0.0, hot: str = HOT) -> list[dict[str, Any]]:
    """``count`` source items; every 1/hot_share-th one under the hot partition key."""
    every = round(1 / hot_share) if hot_share else 0
    items = []
    for i in range(count):
        pk = hot if every and i % every == 0 else f"section-outbox|s{i % 53:02d}"
        items.append(
            {
                "pk": pk,
                "sk": f"msg-{i:06d}",
                "createdAt": Decimal(T0 + i * 5000),
                "body": f"payload {i}",
            }
        )
    return items


def fill(client: DynamoDBClient, table: str, items: Iterable[dict[str, Any]]) -> None:
    batch: list[Any] = []
    for item in items:
        batch.append({"PutRequest": {"Item": to_typed(item)}})
        if len(batch) == 25:
            _write(client, table, batch)
            batch = []
    if batch:
        _write(client, table, batch)


def _write(client: DynamoDBClient, table: str, batch: list[Any]) -> None:
    pending: Any = {table: batch}
    while pending:
        pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems")


def expected(client: DynamoDBClient, source: str) -> set[str]:
    """The transformed source, computed here rather than by the engine."""
    out = set()
    for raw in scan_all(client, source):
        for item in hot_outbox(to_plain(raw)):
            out.add(to_json(to_plain(to_typed(item))))
    return out


def destination(client: DynamoDBClient, table: str) -> set[str]:
    return {to_json(item) for item in plain_destination(client, table)}


def plain_destination(client: DynamoDBClient, table: str) -> Iterator[dict[str, Any]]:
    for raw in scan_all(client, table):
        plain = to_plain(raw)
        yield {k: v for k, v in plain.items() if not k.startswith(RESERVED_PREFIX)}


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a `livemigrate backfill` subprocess needs for these settings."""
    return {
        **os.environ,
        **TEST_ENV,
        "LIVEMIGRATE_MIGRATION_ID": settings.migration_id,
        "LIVEMIGRATE_SOURCE_TABLE": settings.source_table,
        "LIVEMIGRATE_DESTINATION_TABLE": settings.destination_table,
        "LIVEMIGRATE_CONTROL_TABLE": settings.control_table,
        "LIVEMIGRATE_TRANSFORM": settings.transform,
    }


# -- transforms the bad-input tests point LIVEMIGRATE_TRANSFORM at ------------------------------
def raising_transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Fails on every 7th item, like a transform meeting data it did not expect."""
    if int(str(item["sk"]).rsplit("-", 1)[1]) % 7 == 0:
        raise ValueError(f"unexpected shape of {item['sk']}")
    yield from hot_outbox(item)


def keyless_transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Forgets the sort key on every 5th item."""
    for out in hot_outbox(item):
        if int(str(item["sk"]).rsplit("-", 1)[1]) % 5 == 0:
            out.pop("sk")
        yield out


def bloating_transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Makes items marked ``big`` larger than DynamoDB's 400 KB limit."""
    for out in hot_outbox(item):
        if out.get("big"):
            out["blob"] = "x" * (420 * 1024)
        yield out


def tables(clients: AwsClients, items: list[dict[str, Any]]) -> Settings:
    """A source holding ``items`` (with a stream) and an empty destination (without)."""
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    fill(clients.dynamodb, source, items)
    return settings_for(source, dest)


def outbox_tables(clients: AwsClients, count: int = 40, **extra: str) -> Settings:
    """``tables`` with ``count`` outbox items; ``extra`` settings (a transform, ...)."""
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    fill(clients.dynamodb, source, outbox_items(count))
    return settings_for(source, dest, **extra)


def backfill_cli(monkeypatch: pytest.MonkeyPatch, settings: Settings, *flags: str) -> int:
    """``livemigrate backfill <flags>`` in this process, configured by the environment."""
    env = settings_env(settings)
    for name, value in env.items():
        if name.startswith("LIVEMIGRATE_"):
            monkeypatch.setenv(name, value)
    return main(["backfill", *flags])
