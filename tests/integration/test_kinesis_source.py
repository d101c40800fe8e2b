"""The Kinesis change source against moto's Kinesis, with records placed by hand in the worst
order (the suite in test_consumer_suite.py runs the same engine fed by the bridge)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.errors import ConflictError
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, Tuning
from stream_consumer.kinesis.bridge import create_stream
from stream_consumer.kinesis.records import PrecisionRefused, change_record
from stream_consumer.kinesis.source import KinesisShardSource
from stream_consumer.metrics import Metrics
from stream_consumer.tombstones import FinalizeOptions, finalize_tombstones
from tests.services import create_table, scan_all, settings_for, unique

pytestmark = pytest.mark.integration

JAN = 1704067200
OUTBOX = "section-outbox|docket"


@dataclass
class Setup:
    clients: AwsClients
    migration: Migration
    stream: str

    def send(self, *records: dict[str, Any]) -> None:
        """Put records into the stream in exactly this order (one shard)."""
        assert self.clients.kinesis is not None
        for record in records:
            self.clients.kinesis.put_record(
                StreamName=self.stream, Data=json.dumps(record).encode(), PartitionKey="one"
            )

    def consume(self, batch_size: int) -> Consumer:
        assert self.clients.kinesis is not None
        metrics = Metrics("source")
        applier = DestinationApplier.for_migration(self.migration, metrics, refresh_seconds=0.0)
        consumer = Consumer(
            KinesisShardSource(self.clients.kinesis, self.stream),
            applier,
            ConsumerOptions(
                store=self.migration.store,
                name="source",
                worker_id=unique("w"),
                lease_seconds=10.0,
                clock=SystemClock(),
                dead_letters=self.migration.dead_letters,
                origin="stream",
                tuning=Tuning(batch_size=batch_size, poll_interval=0.02, heartbeat_interval=0.1),
            ),
            metrics=metrics,
        )
        assert consumer.run(until_caught_up=True)
        return consumer

    def destination(self) -> list[dict[str, Any]]:
        table = self.migration.settings.destination_table
        return [to_plain(i) for i in scan_all(self.clients.dynamodb, table)]


def setup(clients: AwsClients, margin: float) -> Setup:
    assert clients.kinesis is not None
    source, dest, stream = unique("src"), unique("dst"), unique("kin")
    create_table(clients.dynamodb, source, stream=None)
    create_table(clients.dynamodb, dest, stream=None)
    create_stream(clients.kinesis, stream, shards=1)
    settings = settings_for(
        source, dest, change_source="kinesis", kinesis_stream=stream, kinesis_delivery_margin=margin
    )
    migration = open_migration(settings, clients)
    # The backfill is over: without kept tombstones every delete would be a real one.
    migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    return Setup(clients, migration, stream)


@pytest.fixture
def kinesis(clients: AwsClients) -> Iterator[Setup]:
    yield setup(clients, margin=0.0)


def change(event: str, micros: int, new: int | None, old: int | None, table: str) -> dict[str, Any]:
    """A change of item (OUTBOX, i0001); ``new``/``old`` pick the image's ``n``."""

    def image(n: int | None) -> dict[str, Any] | None:
        if n is None:
            return None
        return to_typed({"pk": OUTBOX, "sk": "i0001", "createdAt": Decimal(JAN + 1), "n": n})

    keys = to_typed({"pk": OUTBOX, "sk": "i0001"})
    return change_record(event, keys, image(new), image(old), micros, table_name=table)


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_delete_is_never_undone_by_late_or_repeated_older_records(
    kinesis: Setup, batch_size: int
) -> None:
    # GIVEN an item inserted, modified and deleted, whose records arrive as: insert, delete,
    # then the older modify and the insert again (late and duplicated), one record per batch
    # (a real delete would let the late modify re-create the item) or all in one batch (folding
    # by arrival order would keep the late insert)
    table = kinesis.migration.settings.source_table
    t1 = int((time.time() - 5) * 1_000_000)
    insert = change("INSERT", t1, 1, None, table)
    modify = change("MODIFY", t1 + 1000, 2, 1, table)
    remove = change("REMOVE", t1 + 2000, None, 2, table)
    kinesis.send(insert, remove, modify, insert)
    # WHEN the consumer reads them all
    kinesis.consume(batch_size)
    # THEN the item is a tombstone, never live again; the watermark purge then removes it
    held = kinesis.destination()
    assert [bool(i.get("_lm_tomb")) for i in held] == [True]
    purged = finalize_tombstones(
        kinesis.migration, SystemClock(), FinalizeOptions(settle_seconds=0.0)
    )
    assert purged == 1
    assert kinesis.destination() == []


def test_a_tombstone_younger_than_the_watermark_is_kept(clients: AwsClients) -> None:
    # GIVEN a delivery margin of an hour: a delete made seconds ago may still be overtaken
    world = setup(clients, margin=3600.0)
    table = world.migration.settings.source_table
    t1 = int((time.time() - 5) * 1_000_000)
    world.send(change("INSERT", t1, 1, None, table), change("REMOVE", t1 + 1000, None, 1, table))
    world.consume(100)
    # WHEN tombstones are finalised
    purged = finalize_tombstones(
        world.migration, SystemClock(), FinalizeOptions(settle_seconds=0.0)
    )
    # THEN the young tombstone stays (an older put of the item could still arrive)
    assert purged == 0
    assert [bool(i.get("_lm_tomb")) for i in world.destination()] == [True]


def test_millisecond_precision_stops_the_consumer_with_the_fix(kinesis: Setup) -> None:
    record = change("INSERT", int(time.time() * 1000), 1, None, "orders")
    record["dynamodb"]["ApproximateCreationDateTimePrecision"] = "MILLISECOND"
    kinesis.send(record)
    with pytest.raises(PrecisionRefused) as caught:
        kinesis.consume(10)
    assert "UpdateKinesisStreamingDestination" in caught.value.fix
    assert kinesis.destination() == []


def test_the_change_source_kind_is_fixed_at_the_first_start(kinesis: Setup) -> None:
    # GIVEN a migration started with a Kinesis change source
    settings = kinesis.migration.settings
    meta = kinesis.migration.store.get("META") or {}
    assert meta["change_source"] == "kinesis"
    # WHEN a command runs it with DynamoDB Streams
    other = settings.model_copy(update={"change_source": "dynamodb-streams"})
    # THEN it is refused, naming the recorded kind and how to fix it
    with pytest.raises(ConflictError) as caught:
        open_migration(other, kinesis.clients, require_source_stream=False)
    assert "kinesis" in caught.value.problem
    assert "LIVEMIGRATE_CHANGE_SOURCE=kinesis" in caught.value.fix
