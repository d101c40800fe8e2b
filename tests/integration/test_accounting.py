"""Request accounting against moto's server: counted on the wire, persisted, shown by status."""

from __future__ import annotations

import math
from typing import Any

import pytest

from backfill.worker import Engine, Options
from livemigrate import status
from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.items import item_size
from livemigrate.migration import open_migration
from tests.services import create_table, settings_for, unique
from tests.support.backfill import fill, outbox_items

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_backfill_requests_are_counted_persisted_and_shown(clients: AwsClients) -> None:
    # GIVEN a 300-item source table (and a copy of its items to size them by)
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    fill(clients.dynamodb, source, outbox_items(300))
    settings = settings_for(source, dest)
    # (every Scan page of the source the client receives, to size it independently)
    pages: list[list[dict[str, Any]]] = []

    def seen_page(params: dict[str, Any], **_: Any) -> None:
        if params.get("TableName") == source:
            pages.append([])

    def seen_items(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "Scan" and pages and not pages[-1]:
            pages[-1].extend(parsed.get("Items", []))

    # WHEN one worker backfills it in pages of 100 (2 segments)
    migration = open_migration(settings, clients)
    clients.dynamodb.meta.events.register("before-parameter-build.dynamodb.Scan", seen_page)
    clients.dynamodb.meta.events.register("after-call.dynamodb.Scan", seen_items)
    engine = Engine(migration, Options(workers=1, page_size=100, total_segments=2))
    assert engine.run()
    # THEN every item put is one destination write, charged by its size
    assert migration.store.ledger is not None
    seen = migration.store.ledger.by_role()
    puts = seen["destination"]["PutItem"]
    assert puts["requests"] == 300
    assert puts["write_units"] >= 300
    # AND the scans are charged half a unit per started 4 KB of each page, eventually consistent
    clients.dynamodb.meta.events.unregister("before-parameter-build.dynamodb.Scan", seen_page)
    clients.dynamodb.meta.events.unregister("after-call.dynamodb.Scan", seen_items)
    scans = seen["source"]["Scan"]
    assert scans["requests"] == len(pages) >= 3  # 2 segments: at least 3 pages
    sizes = [sum(item_size(i) for i in page) for page in pages]
    assert scans["read_units"] == sum(max(1, math.ceil(size / 4096)) / 2 for size in sizes)
    # AND status shows the persisted totals: source and destination exactly, control
    # up to the few requests made after the last counter write
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    shown = status.collect(store)["requests"]
    assert shown["by_operation"]["destination"] == seen["destination"]
    assert shown["by_operation"]["source"] == seen["source"]
    control = sum(op["requests"] for op in seen["control"].values())
    assert control - 3 <= shown["by_role"]["control"]["requests"] <= control
    assert "requests (capacity units computed from item sizes)" in status.render(
        status.collect(store)
    )
