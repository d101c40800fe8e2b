"""Timing faults around the flip, on moto (issue 10, items 5 and 6).

Item 5: after a fenced cutover the application renews an item in the destination; an hour later
the stale source copy expires (a TTL delete), and a late process writes the source. Before the
fix the forward consumer applied both over the application's data. Now every change of the
retired table made after the fence is frozen and counted; after a rollback the same holds for
the destination.

Item 6: a writer read the flag before the fence, but its write is slow (held in flight past the
fence and the flip). Checked writes carry a condition on the flag's epoch, so DynamoDB cancels
it on the old table and the client writes again to the table the flag names now.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from livemigrate.aws import AwsClients, make_clients
from livemigrate.client import ActiveTable
from livemigrate.flag import ControlFlagStore, Flag
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import STREAM_TIME_PRECISION
from stream_consumer.applier import DestinationApplier
from stream_consumer.metrics import Metrics
from tests.services import StreamTail, create_table, scan_all, settings_for, unique

pytestmark = pytest.mark.integration

KEY_A = {"pk": {"S": "user|a"}, "sk": {"S": "profile"}}


@pytest.fixture
def migration(clients: AwsClients) -> Migration:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)
    return open_migration(settings_for(source, dest), clients)


def flags_of(migration: Migration) -> ControlFlagStore:
    return ControlFlagStore(migration.store, migration.source.name, migration.destination.name)


def fenced_flip(flags: ControlFlagStore, side: Any) -> Flag:
    """What ``cutover --fenced`` writes: the fence, then the flip frozen from the fence."""
    flag = flags.read()
    fenced = flags.write(flag.fence(time.time(), 30), flag.epoch)
    flipped = fenced.flipped(side, time.time(), frozen_after=fenced.fenced_at)
    return flags.write(flipped, fenced.epoch)


def user(name: str, version: str) -> dict[str, Any]:
    return to_typed(
        {"pk": f"user|{name}", "sk": "profile", "v": version, "createdAt": 1_735_689_600}
    )


def destination(clients: AwsClients, migration: Migration) -> dict[str, str]:
    held = (to_plain(i) for i in scan_all(clients.dynamodb, migration.destination.name))
    return {str(i["pk"]): str(i["v"]) for i in held}


def test_late_changes_of_the_retired_source_never_reach_the_destination(
    clients: AwsClients, migration: Migration
) -> None:
    ddb, source = clients.dynamodb, migration.source.name
    tail = StreamTail(clients, source)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    for name in ("a", "b"):
        ddb.put_item(TableName=source, Item=user(name, "v1"))
    applier.apply(tail.drain())
    assert destination(clients, migration) == {"user|a": "v1", "user|b": "v1"}

    fenced_flip(flags_of(migration), "destination")
    # The application renews a in the new table (a plain put: no stamp, as the app writes).
    ddb.put_item(TableName=migration.destination.name, Item=user("a", "app-v2"))
    # Late source changes: the stale copy of a expires (TTL), b is overwritten, c is new.
    ddb.delete_item(TableName=source, Key=KEY_A)
    ddb.put_item(TableName=source, Item=user("b", "late"))
    ddb.put_item(TableName=source, Item=user("c", "late"))
    # The reverse consumer's own write to the source is an echo, not a late change.
    echo = {**user("d", "from-destination"), "_lm_rseq": {"S": "1".zfill(40)}}
    ddb.put_item(TableName=source, Item=echo)
    applier.apply(tail.drain())

    assert destination(clients, migration) == {"user|a": "app-v2", "user|b": "v1"}
    consumer = migration.store.get("CONSUMER#source") or {}
    assert int(consumer["retired_writes"]) == 3
    assert '{"pk":{"S":"user|a"},"sk":{"S":"profile"}}' in consumer["retired_last_keys"]
    assert applier.metrics.value("retired_writes_total") == 3
    assert applier.metrics.value("echoes_skipped_total") == 1
    applier.close()


def test_records_made_before_the_fence_are_still_applied_after_the_flip(
    clients: AwsClients, migration: Migration
) -> None:
    # A consumer that lags behind the flip (or replays after a crash) still applies what the
    # source held while it was the active table.
    ddb, source = clients.dynamodb, migration.source.name
    tail = StreamTail(clients, source)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    ddb.put_item(TableName=source, Item=user("a", "v1"))
    time.sleep(STREAM_TIME_PRECISION + 0.1)  # certainly before the fence, even floored
    fenced_flip(flags_of(migration), "destination")
    applier.apply(tail.drain())
    assert destination(clients, migration) == {"user|a": "v1"}
    applier.close()


class SlowSend:
    """Holds the first checked write in flight (after the client read the flag, before DynamoDB
    sees the request) until the test releases it, as a slow network or retries would."""

    def __init__(self, client: Any) -> None:
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.held = False
        client.meta.events.register("before-send.dynamodb.TransactWriteItems", self)

    def __call__(self, **_: Any) -> None:
        if not self.held:
            self.held = True
            self.in_flight.set()
            assert self.release.wait(30), "the test never released the write"


def test_a_write_slower_than_the_fence_lands_on_the_table_the_flag_names_when_it_lands(
    clients: AwsClients, migration: Migration
) -> None:
    app_client = make_clients(None).dynamodb
    slow = SlowSend(app_client)
    flags = flags_of(migration)
    active = ActiveTable(flags, ttl=60.0, dynamodb=app_client)  # a long cache: worst case
    source, dest = migration.source.name, migration.destination.name
    assert active.active_table() == source

    written: list[str] = []
    writer = threading.Thread(
        target=lambda: written.append(active.put(lambda table: user("slow", table)))
    )
    writer.start()
    assert slow.in_flight.wait(10)
    fenced_flip(flags, "destination")  # fence and flip while the write is on its way
    slow.release.set()
    writer.join(30)

    assert written == [dest]
    assert active.races == 1
    in_source = clients.dynamodb.get_item(TableName=source, Key=KEY_SLOW)
    assert "Item" not in in_source
    held = clients.dynamodb.get_item(TableName=dest, Key=KEY_SLOW, ConsistentRead=True)
    assert to_plain(held["Item"])["v"] == dest  # built for the table it landed on


KEY_SLOW = {"pk": {"S": "user|slow"}, "sk": {"S": "profile"}}


def test_the_cached_write_path_cannot_stop_a_slow_write_so_checked_writes_exist(
    clients: AwsClients, migration: Migration
) -> None:
    # The limitation the checked writes remove, kept visible: a cached write() that read the
    # flag before the fence lands on the old table after the flip.
    app_client = make_clients(None).dynamodb
    flags = flags_of(migration)
    active = ActiveTable(flags, ttl=60.0, dynamodb=app_client)
    table = active.table_for_write()
    fenced_flip(flags, "destination")
    app_client.put_item(TableName=table, Item=user("slow", table))
    assert table == migration.source.name
    assert "Item" in clients.dynamodb.get_item(TableName=table, Key=KEY_SLOW)
