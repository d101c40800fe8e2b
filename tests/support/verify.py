"""A seeded, backfilled migration for the verify tests, and fast verify options."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from livemigrate.items import to_plain, to_typed
from livemigrate.migration import Migration
from livemigrate.verify import VerifyOptions

FAST = VerifyOptions(buckets=8, segments=2, recheck_wait=0.2, recheck_rounds=2)


def source_item(i: int, v: str = "x") -> dict[str, Any]:
    pk = "section-outbox|docket" if i % 3 == 0 else f"user|{i}"
    return to_typed(
        {"pk": pk, "sk": f"item-{i:04d}", "createdAt": Decimal(1_700_000_000 + i), "v": v}
    )


def backfill(migration: Migration, items: list[dict[str, Any]]) -> None:
    """Copy through the transform with the backfill's put-if-absent (the engine's write rule)."""
    for item in items:
        for out in migration.transformer.run(to_plain(item)):
            migration.writer.put_if_absent(out)


def seed(migration: Migration, n: int = 30) -> list[dict[str, Any]]:
    items = [source_item(i) for i in range(n)]
    for item in items:
        migration.clients.dynamodb.put_item(TableName=migration.source.name, Item=item)
    backfill(migration, items)
    return items
