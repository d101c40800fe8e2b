"""A change source slower than the lease: the consumer still advances (PageSize).

moto's GetRecords returns 1,000 records in ~5 s on a loaded machine; with a 2 s lease every
read outlived the lease, its batch was refused at the fence and the shard taken again from the
same checkpoint, forever (`search sync --until-caught-up` timed out in CI-like runs). Time is a
FakeClock that the scripted stream advances per record returned, so the test is exact.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from livemigrate.aws import AwsClients
from livemigrate.clock import FakeClock
from livemigrate.items import to_typed
from livemigrate.migration import open_migration
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, PageSize, Tuning
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import Page
from tests.services import create_table, settings_for, unique

ITEMS = 400
PER_RECORD = 0.01  # seconds of (fake) time per record a read returns: 1,000 records = 10 s
LEASE = 2.0
JAN = 1704067200  # 2024-01-01T00:00:00Z


class SlowStream(ScriptedStream):
    """A scripted stream whose reads take time in proportion to the records they return."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(shards=1, clock=clock)
        self.fake = clock
        self.limits: list[int] = []

    def get_records(self, iterator: str, limit: int) -> Page:
        page = super().get_records(iterator, limit)
        self.limits.append(limit)
        self.fake.advance(PER_RECORD * len(page.records))
        return page


def test_page_size_shrinks_for_slow_reads_and_grows_back_for_fast_ones() -> None:
    size = PageSize(1000, lease_seconds=8.0)  # slow above 2 s, fast below 0.5 s, target 1 s
    size.observe("s", 1000, 10.0)
    assert size.of("s") == 100  # proportional: ~1 s per read
    size.observe("s", 100, 2.5)
    assert size.of("s") == 40
    size.observe("s", 40, 1.0)  # neither slow nor fast: kept
    assert size.of("s") == 40
    size.observe("s", 40, 0.1)
    assert size.of("s") == 80
    for _ in range(10):
        size.observe("s", size.of("s"), 0.0)
    assert size.of("s") == 1000  # never above the batch size
    assert size.of("other") == 1000


@pytest.mark.integration
def test_a_source_slower_than_the_lease_is_still_consumed_to_its_end(
    clients: AwsClients,
) -> None:
    # GIVEN a shard of 400 records whose reads take 10 ms per record (4 s for a full read)
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    migration = open_migration(settings_for(source, dest), clients)
    clock = FakeClock(1_900_000_000.0)
    stream = SlowStream(clock)
    table = ScriptedTable(stream)
    for n in range(ITEMS):
        item = {"pk": f"user|{n % 7}", "sk": f"i{n:04d}", "createdAt": Decimal(JAN + n), "n": n}
        table.put(to_typed(item))
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(
        migration, metrics, clock=clock, threads=2, refresh_seconds=0.0, source=table.get
    )
    options = ConsumerOptions(
        store=migration.store,
        name="source",
        worker_id="w1",
        lease_seconds=LEASE,
        clock=clock,
        dead_letters=migration.dead_letters,
        origin="stream",
        tuning=Tuning(batch_size=1000, poll_interval=0.01, heartbeat_interval=0.5),
    )
    consumer = Consumer(stream, applier, options, metrics=metrics)
    # WHEN it runs until caught up with a 2 s lease (stopped after 60 real seconds otherwise)
    stop = threading.Event()
    watchdog = threading.Timer(60.0, stop.set)
    watchdog.start()
    try:
        caught_up = consumer.run(until_caught_up=True, stop_event=stop)
    finally:
        watchdog.cancel()
        applier.close()
    # THEN it caught up with every record applied once its reads were cut to fit the lease
    assert caught_up, f"never caught up; limits read with: {stream.limits[:20]}"
    assert metrics.value("records_applied_total") == ITEMS
    assert stream.limits[0] == 1000 and min(stream.limits) * PER_RECORD <= LEASE / 4
